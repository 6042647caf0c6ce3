"""The learner never scores a signal type outside the registry (issue 17, failure 6).

Events of an unknown type reach PostgreSQL where a deployment allows open types (or a
program writes SQL directly); the online learner (real consumer, real broker) skips them
and ``learner recompute`` skips the same ones, so both give the same state.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid

import psycopg

from personalization.config import Settings
from personalization.kafka import names
from personalization.learner.batch import BatchResult
from personalization.learner.consumer import Learner
from personalization.learner.recompute import recompute_users
from personalization_dev.synthetic import produce, producer
from personalization_dev.testing.learner import fill_population, stream_order, wait_consumed

DIM = 8


def _cells(db_url: str) -> dict[tuple[uuid.UUID, str, str], int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT user_id, content_type, signal_type, event_count FROM user_signal_scores").fetchall()
    return {(u, ct, st): int(n) for u, ct, st, n in rows}


def test_unknown_signal_types_are_never_scored(db_url: str, redis_url: str, kafka_bootstrap: str) -> None:
    prefix = f"us{uuid.uuid4().hex[:8]}"
    topic = names.events_topic(prefix)
    group = f"g-{uuid.uuid4().hex[:8]}"
    pop = fill_population(db_url, users=3, contents=5, events=90, dim=DIM, seed=7)
    # Every third event becomes a typo ("lik") or an operator's type ("prayed"), in PostgreSQL
    # and on the stream alike.
    renamed = {r.event_id: ("lik" if i % 2 else "prayed") for i, r in enumerate(pop.rows) if i % 3 == 0}
    with psycopg.connect(db_url) as conn:
        for event_id, st in renamed.items():
            conn.execute("UPDATE personalization_events SET signal_type = %s WHERE event_id = %s", (st, event_id))
    rows = [dataclasses.replace(r, signal_type=renamed.get(r.event_id, r.signal_type)) for r in pop.rows]
    unknown = sum(1 for st in renamed.values() if st == "lik")
    settings = Settings(
        database={"url": db_url},
        redis={"url": redis_url},
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix},
        learner={"group_id": group, "kafka_group_id": f"k-{uuid.uuid4().hex[:8]}", "session_timeout_ms": 3000,
                 "follow_profiles": False},
        embedding={"dim": DIM},
        ingest={"signal_types_extra": ("prayed",)},
    )
    committed: list[BatchResult] = []
    stop = threading.Event()
    learner = Learner(settings, stop=stop, on_committed=lambda r, _t: committed.append(r))
    thread = threading.Thread(target=learner.run, daemon=True)
    thread.start()
    try:
        ends = produce(producer(kafka_bootstrap), topic, stream_order(rows), topic_prefix=prefix)
        wait_consumed(db_url, group, topic, ends, timeout_s=60)
    finally:
        stop.set()
        thread.join(30)
    online = _cells(db_url)
    assert not any(st == "lik" for _, _, st in online)
    assert any(st == "prayed" for _, _, st in online)  # the operator's type is scored
    assert sum(online.values()) == len(rows) - unknown
    assert sum(r.outcomes.get("unknown_signal", 0) for r in committed) == unknown

    recompute_users(settings)
    assert _cells(db_url) == online
