"""Redis refusing writes (a read-only replica after a failover) pauses the learner like an outage.

The learner probes Redis before each batch so that nothing is committed while the write
after the commit could not be made.  A PING is answered by a read-only Redis, so the probe
is a write; the learner (real consumer, real broker, a private real redis-server) commits
nothing while Redis answers READONLY and catches up, with Redis equal to PostgreSQL, after.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path

import psycopg

from personalization.cache import keys
from personalization.config import Settings
from personalization.kafka import names
from personalization.learner import metrics
from personalization.learner.consumer import Learner
from personalization_dev.synthetic import produce, producer
from personalization_dev.testing.learner import consumed_offsets, fill_population, stream_order, wait_consumed
from personalization_dev.testing.redis_server import RedisServer, free_port
from personalization_dev.testing.waiting import wait_until

DIM = 8


def _retries() -> float:
    return sum(metrics.RETRIES.labels(label)._value.get() for label in ("redis", "redis_after_commit"))


def test_read_only_redis_pauses_without_committing(tmp_path: Path, db_url: str, kafka_bootstrap: str) -> None:
    server = RedisServer(tmp_path)
    server.start()
    admin = server.client()
    prefix = f"lr{uuid.uuid4().hex[:8]}"
    topic = names.events_topic(prefix)
    group = f"g-{uuid.uuid4().hex[:8]}"
    pop = fill_population(db_url, users=4, contents=6, events=300, dim=DIM, seed=9)
    stream = stream_order(pop.rows)
    settings = Settings(
        database={"url": db_url},
        redis={"url": server.url},
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix},
        learner={"group_id": group, "kafka_group_id": f"k-{uuid.uuid4().hex[:8]}", "session_timeout_ms": 3000,
                 "follow_profiles": False, "retry_initial_s": 0.1, "retry_max_s": 0.3},
        embedding={"dim": DIM},
    )
    stop = threading.Event()
    thread = threading.Thread(target=Learner(settings, stop=stop).run, daemon=True)
    thread.start()
    prod = producer(kafka_bootstrap)
    try:
        ends = produce(prod, topic, stream[:100], topic_prefix=prefix)
        wait_consumed(db_url, group, topic, ends, timeout_s=60)

        admin.execute_command("REPLICAOF", "127.0.0.1", free_port())
        before, retries = consumed_offsets(db_url, group, topic), _retries()
        ends = produce(prod, topic, stream[100:200], topic_prefix=prefix)
        # The batch was tried, refused and held back.
        wait_until(lambda: _retries() >= retries + 1, 30,
                   lambda: f"the learner to retry the refused batch (retries {_retries()}, before {retries})")
        assert consumed_offsets(db_url, group, topic) == before
        assert thread.is_alive()

        admin.execute_command("REPLICAOF", "NO", "ONE")
        wait_consumed(db_url, group, topic, ends, timeout_s=60)
        ends = produce(prod, topic, stream[200:], topic_prefix=prefix)
        wait_consumed(db_url, group, topic, ends, timeout_s=60)
    finally:
        stop.set()
        thread.join(30)
        with contextlib.suppress(Exception):
            admin.close()
    try:
        with psycopg.connect(db_url) as conn:
            online = dict(conn.execute("SELECT user_id, embedding FROM user_embeddings").fetchall())
            counted = conn.execute("SELECT sum(event_count) FROM user_signal_scores").fetchone()
        assert counted is not None and int(counted[0]) == len(pop.rows)
        with contextlib.closing(server.client()) as check:
            for user_id, vector in online.items():
                assert check.get(keys.user_embedding(user_id)) == vector
    finally:
        server.stop()
