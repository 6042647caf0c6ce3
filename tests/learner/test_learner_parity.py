"""Exactly-once parity: the online state equals a recomputation from personalization_events.

The topic carries Debezium envelopes (same key, partitioner and fields as the relay) for
rows that exist in the database, in a commit order that is not event_id order, with
occurred_at far out of order, relay-style re-sends of earlier stretches, and malformed
messages.  The learner runs as a child process that is SIGKILLed twice while a batch
transaction is open.  Afterwards the stored and cached state must equal a recomputation.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from typing import Any

import numpy as np
import orjson
import psycopg
import redis
from confluent_kafka import OFFSET_BEGINNING

from personalization.cache import keys
from personalization.config import Settings
from personalization.core.decay import DEFAULT_DECAY
from personalization.kafka import names
from personalization.kafka.envelope import parse_event_message
from personalization.learner.recompute import recompute_users
from personalization_dev.synthetic import envelope, key_for, produce, producer
from personalization_dev.testing.kafka import consume, new_consumer
from personalization_dev.testing.learner import (
    LearnerProcess,
    consumed_offsets,
    fill_population,
    stream_order,
    wait_consumed,
)
from personalization_dev.testing.waiting import wait_until

DIM = 8


def _state(db_url: str) -> tuple[dict[tuple[Any, str, str], tuple[float, Any, int]], dict[Any, Any]]:
    with psycopg.connect(db_url) as conn:
        scores = {
            (u, ct, st): (s, r, n)
            for u, ct, st, s, r, n in conn.execute(
                "SELECT user_id, content_type, signal_type, score, ref_time, event_count FROM user_signal_scores"
            )
        }
        embs = {
            u: (e, n, ne)
            for u, e, n, ne in conn.execute(
                "SELECT user_id, embedding, event_count, embedded_count FROM user_embeddings"
            )
        }
    return scores, embs


def _in_transaction(db_url: str, pid: int) -> bool:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'idle in transaction'",
            (f"personalization-learner {pid}",),
        ).fetchone()
    return bool(row and row[0])


def _kill_mid_batch(proc: LearnerProcess, db_url: str) -> None:
    """SIGKILL ``proc`` while it has a batch transaction open (applied, not committed)."""
    # Polled every 2 ms: the window between a batch's writes and its commit is short.
    wait_until(lambda: _in_transaction(db_url, proc.pid), 60,
               lambda: f"the learner inside a batch transaction; its output:\n{proc.output()[-3000:]}",
               interval_s=0.002)
    proc.kill()


def test_online_state_equals_recompute_after_replays_reordering_and_kill_9(
    db_url: str, redis_url: str, kafka_bootstrap: str
) -> None:
    prefix = f"lp{uuid.uuid4().hex[:8]}"
    group = f"learner-{uuid.uuid4().hex[:8]}"
    pop = fill_population(
        db_url, users=15, contents=40, events=3000, dim=DIM, without_vectors=6, levels={0: "limited", 1: "private"}
    )
    limited, private = pop.users[0], pop.users[1]
    stream = stream_order(pop.rows)
    rng = random.Random(3)
    topic = names.events_topic(prefix)
    malformed: list[tuple[bytes | None, bytes | None]] = [
        (b'{"user_id":null}', b"not json at all"),
        (key_for(pop.users[2]), b'{"hello": "world"}'),
        (key_for(pop.users[3]), orjson.dumps({"op": "x", "source": {}, "after": None})),
        (key_for(pop.users[4]), envelope(stream[0]).replace(b'"signal_weight":"', b'"signal_weight":"abc')),
    ]
    prod = producer(kafka_bootstrap)
    env = {
        "PERSONALIZATION_DATABASE_URL": db_url,
        "PERSONALIZATION_REDIS_URL": redis_url,
        "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PERSONALIZATION_KAFKA_TOPIC_PREFIX": prefix,
        "PERSONALIZATION_LEARNER_GROUP_ID": group,
        "PERSONALIZATION_LEARNER_SESSION_TIMEOUT_MS": "3000",
        "PERSONALIZATION_LEARNER_BATCH_MAX": "150",
        "PERSONALIZATION_LEARNER_FOLLOW_PROFILES": "false",
        "PERSONALIZATION_LEARNER_METRICS_PORT": "0",
        "PERSONALIZATION_LEARNER_DEBUG_COMMIT_DELAY_S": "0.03",
        "PERSONALIZATION_EMBEDDING_DIM": str(DIM),
    }

    def learner(kafka_group: str | None = None) -> LearnerProcess:
        # A fresh Kafka group per lone child: Tansu can lock up a group whose members all
        # left; the learner's own positions are in PostgreSQL under its learner group.
        kafka_group = kafka_group or f"k-{uuid.uuid4().hex[:8]}"
        return LearnerProcess({**env, "PERSONALIZATION_LEARNER_KAFKA_GROUP_ID": kafka_group})

    half = len(stream) // 2
    ends = produce(prod, topic, stream[:half], topic_prefix=prefix, raw=malformed[:2])
    procs = [learner()]
    try:
        procs[0].start()
        _kill_mid_batch(procs[0], db_url)
        at_kill = consumed_offsets(db_url, group, topic)
        # Two members of one group split the partitions; one dies mid-batch and the
        # survivor takes its partitions over in the rebalance.
        shared = f"k-{uuid.uuid4().hex[:8]}"
        procs += [learner(shared), learner(shared)]
        procs[1].start()
        procs[1].wait_for_output(f"assigned {prefix}")
        # The restart resumes exactly after the last committed batch: it seeks every
        # partition to the offset stored with the state when the first child died.
        first_assignment = next(ln for ln in procs[1].output().splitlines() if "assigned " in ln)
        sought = {int(p): int(o) for p, o in re.findall(r"\[(\d+)\]@(-?\d+)", first_assignment)}
        assert sought == {p: at_kill.get(p, OFFSET_BEGINNING) for p in sought}, (sought, at_kill)
        assert len(sought) == 4
        procs[2].start()
        procs[2].wait_for_output(f"assigned {prefix}")
        # More work for both members: the second half, relay-style re-sends of earlier
        # stretches (new offsets, same positions) and more malformed messages.
        replays = []
        for _ in range(3):
            start = rng.randrange(0, half - 200)
            replays += stream[start : start + 200]
        ends2 = produce(prod, topic, stream[half:] + replays, topic_prefix=prefix, raw=malformed[2:])
        ends = {p: max(ends.get(p, 0), ends2.get(p, 0)) for p in set(ends) | set(ends2)}
        _kill_mid_batch(procs[1], db_url)
        wait_consumed(db_url, group, topic, ends, timeout_s=180)
        assert procs[2].stop() == 0, procs[2].output()[-3000:]
        # The survivor saw the partitions move (eager rebalancing revokes, then assigns).
        assert "revoked" in procs[2].output()
    finally:
        for p in procs:
            p.close()

    online_scores, online_embs = _state(db_url)
    cache = redis.Redis.from_url(redis_url)
    cached = {u: cache.get(keys.user_embedding(u)) for u in pop.users}
    ttl = cache.ttl(keys.user_embedding(pop.users[5]))
    assert 0 < ttl <= keys.USER_EMBEDDING.ttl_s

    settings = Settings(database={"url": db_url}, redis={"url": redis_url}, embedding={"dim": DIM})
    report = recompute_users(settings)
    assert report.users == len(pop.users) and report.events == len(pop.rows)
    re_scores, re_embs = _state(db_url)

    # Scores: same cells, same counts, same value evaluated at a common time.
    assert set(online_scores) == set(re_scores)
    when = max(r for _, r, _ in re_scores.values())
    for cell, (score, ref, n) in online_scores.items():
        r_score, r_ref, r_n = re_scores[cell]
        assert n == r_n, cell
        hl = DEFAULT_DECAY.for_signal(cell[2]).half_life_s
        a = score * 2 ** (-(when - ref).total_seconds() / hl)
        b = r_score * 2 ** (-(when - r_ref).total_seconds() / hl)
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), (cell, a, b)
    total = sum(n for _, _, n in online_scores.values())
    # Below `standard` no learner state is kept at all.
    assert total == sum(1 for r in pop.rows if r.user_id not in (limited, private))
    assert not any(u in (limited, private) for u, _, _ in online_scores)

    # Embeddings: same users, counts, direction; Redis holds the stored vector.
    assert set(online_embs) == set(re_embs)
    assert limited not in online_embs and private not in online_embs
    assert cached[limited] is None and cached[private] is None
    for u, (vec, n, ne) in online_embs.items():
        r_vec, r_n, r_ne = re_embs[u]
        assert (n, ne) == (r_n, r_ne)
        a = np.frombuffer(vec, dtype="<f4").astype(np.float64)
        b = np.frombuffer(r_vec, dtype="<f4").astype(np.float64)
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.99999, u
        assert cached[u] == vec

    # The malformed messages went to the dead-letter topic with their origin.
    dlq = new_consumer(kafka_bootstrap, names.learner_dlq_topic(prefix))
    try:
        dead = consume(dlq, len(malformed), timeout_s=30)
    finally:
        dlq.close()
    assert {m.value() for m in dead} == {v for _, v in malformed}
    headers = dict(dead[0].headers() or [])
    assert headers["source_topic"] == topic.encode() and "source_offset" in headers
    # Sanity of the fixture itself: the stream really was out of event_id order.
    ids = [parse_event_message(key_for(r.user_id), envelope(r)) for r in stream[:50]]
    assert [getattr(x, "event_id", 0) for x in ids] != sorted(getattr(x, "event_id", 0) for x in ids)
