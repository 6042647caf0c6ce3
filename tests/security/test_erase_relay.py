"""End to end with the real CDC relay (Debezium on the JVM): the erase's tombstone carries the
very key bytes the relay gives the user's records, in the same partition, after them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import orjson
import psycopg
import pytest

from personalization.composition import open_platform
from personalization.config import Settings
from personalization.datarights.erase import Eraser, KafkaTombstones, cdc_key
from personalization.datarights.worker import ErasureWorker
from personalization.kafka import names
from personalization_dev.testing.kafka import consume, new_consumer, relay_env, scratch_database

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def relay_db(template_db: str, pg_admin_url: str) -> Iterator[str]:
    with scratch_database(pg_admin_url, template=template_db) as url:
        yield url


async def test_tombstone_key_and_partition_match_the_relay(
    relay_db: str, kafka_bootstrap: str, redis_url: str
) -> None:
    from personalization_dev.relayproc import RelayProcess

    prefix = f"er{uuid.uuid4().hex[:8]}"
    env = relay_env(relay_db, kafka_bootstrap, prefix)
    topic = names.events_topic(prefix)
    users = [uuid.uuid4() for _ in range(4)]
    with RelayProcess(env) as relay:
        relay.start()
        with psycopg.connect(relay_db) as conn:
            for u in users:
                conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (u,))
                conn.execute("INSERT INTO personalization_events (user_id, content_id, content_type, signal_type, "
                             "signal_weight, occurred_at) VALUES (%s, 'JHN.3', 'chapter', 'read', 0.5, now())", (u,))
        consumer = new_consumer(kafka_bootstrap, topic)
        try:
            relayed = {m.key(): m for m in consume(consumer, len(users), timeout_s=60) if m.value() is not None}
            victim = users[0]
            # Byte for byte the relay's key: compaction matches keys by bytes.
            assert cdc_key(victim) in relayed, list(relayed)
            settings = Settings(
                database={"url": relay_db},
                redis={"url": redis_url},
                kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix},
            )
            async with open_platform(settings) as p:
                report = await Eraser(p.db, p.redis, settings).erase(victim, "test")
                tomb = KafkaTombstones(settings)
                try:
                    result = await ErasureWorker(p.db, p.redis, settings, tombstones=tomb).run_once()
                finally:
                    tomb.close()
            assert report.pending == ["kafka"] and result.done == {"kafka": 1} and result.completed == 1
            deadline = time.monotonic() + 60
            later: list[object] = []
            while time.monotonic() < deadline and not any(
                m.key() == cdc_key(victim) and m.value() is None for m in later  # type: ignore[attr-defined]
            ):
                later += consume(consumer, 1, timeout_s=2)
        finally:
            consumer.close()
    tomb_msg = next(m for m in later if m.key() == cdc_key(victim) and m.value() is None)  # type: ignore[attr-defined]
    data = relayed[cdc_key(victim)]
    assert tomb_msg.partition() == data.partition() and tomb_msg.offset() > data.offset()  # type: ignore[attr-defined]
    # The relay's own records of the erase reveal nothing: event deletes (default replica
    # identity) are keyed {"user_id": null} and carry the event id and Debezium's placeholder
    # values for the NOT NULL columns, not the user's data; nothing re-publishes the user's
    # events as anonymous rows (no create or update after the erase).
    deletes = [m for m in later if m.value() is not None and m.topic() == topic]  # type: ignore[attr-defined]
    assert deletes
    for m in deletes:
        change = orjson.loads(m.value())  # type: ignore[attr-defined]
        assert change["op"] == "d" and change["after"] is None, change
        assert orjson.loads(m.key()) == {"user_id": None}  # type: ignore[attr-defined]
        assert str(victim) not in m.value().decode() and "JHN.3" not in m.value().decode()  # type: ignore[attr-defined]
