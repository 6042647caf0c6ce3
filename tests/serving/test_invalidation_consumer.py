"""The cache-invalidation consumer on a real broker and Redis, with both message shapes.

A Kafka Connect worker keeps its JSON converter's default ``schemas.enable=true`` unless told
otherwise; its profile and trait changes must invalidate exactly like the relay's.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from uuid import UUID

import redis

from envelope_shapes import SHAPES, change, key, profile_row, trait_row
from personalization.cache import keys
from personalization.cache.serving import generation_invalidator
from personalization.kafka import names
from personalization.kafka.topics import ensure_topics
from personalization.serving.invalidation import run_invalidation_consumer
from personalization_dev.synthetic import producer
from personalization_dev.testing.waiting import wait_until


def _run_until(kafka_bootstrap: str, prefix: str, invalidate: Callable[[UUID], None],
               done: Callable[[], bool], awaited: Callable[[], str]) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=run_invalidation_consumer, args=(kafka_bootstrap, prefix, invalidate),
                              kwargs={"stop": stop, "extra_config": {"session.timeout.ms": 3000}})
    thread.start()
    try:
        wait_until(done, 60, awaited)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_schemas_enabled_profile_and_trait_changes_invalidate(kafka_bootstrap: str, redis_url: str) -> None:
    prefix = f"pz{uuid.uuid4().hex[:8]}"
    profile_topic, traits_topic = names.invalidation_topics(prefix)
    ensure_topics(kafka_bootstrap, [profile_topic, traits_topic], partitions=1)
    client = redis.Redis.from_url(redis_url)
    users = {(table, shape): uuid.uuid4() for table in ("user_profile", "user_traits") for shape in SHAPES}
    gens = {}
    for u in users.values():
        client.hset(keys.user_preferences(u), "tone", "gentle")
        client.set(keys.user_preferences_gen(u), "g0")
        gens[u] = b"g0"
    prod = producer(kafka_bootstrap)
    for (table, shape), u in users.items():
        row = profile_row(u) if table == "user_profile" else trait_row(u)
        topic = profile_topic if table == "user_profile" else traits_topic
        prod.produce(topic, key=key(u, shape=shape, table=table, prefix=prefix),
                     value=change(table, "u", after=row, shape=shape, prefix=prefix))
    # An unreadable message is skipped and does not stop the consumer.
    prod.produce(profile_topic, key=b"{}", value=b"not json")
    assert prod.flush(30) == 0

    seen: list[UUID] = []
    api_protocol = generation_invalidator(redis_url)

    def invalidate(user_id: UUID) -> None:
        api_protocol(user_id)
        seen.append(user_id)

    _run_until(kafka_bootstrap, prefix, invalidate, lambda: set(users.values()) <= set(seen),
               lambda: f"every changed user invalidated (seen: {({k: v in seen for k, v in users.items()})})")
    assert set(seen) == set(users.values()), {k: v in seen for k, v in users.items()}
    for u in users.values():
        # The API's protocol: snapshot gone and a new generation token (racing fills are refused).
        assert client.exists(keys.user_preferences(u)) == 0
        assert client.get(keys.user_preferences_gen(u)) not in (None, gens[u])
