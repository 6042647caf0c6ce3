"""``personalization bench learner``: online learner throughput and freshness.

Method (one run, one JSON line):

* A scratch database next to the configured one gets ``users`` profiles, ``contents``
  content embeddings of ``dim`` values and ``events`` events (COPY).  A memory-only Tansu
  broker is started (or the configured one is used with ``--broker configured``).
* Throughput topic: for exactly those rows, the Debezium envelope the relay would write
  (same key, partitioner, fields; ``learner.synthetic``) is produced with a plain
  confluent-kafka Producer, in a commit order that is not event_id order.  Going through
  the JVM relay would cap the fill at its ~5k events/s and measure the relay, not the
  learner.
* Baseline ``bare_consume_per_s``: a bare confluent-kafka ``consume()`` loop (new group)
  reading the whole topic, messages/s from the first message to the last.
* ``one_consumer_events_per_s``: one ``personalization learner run`` child process drains
  the topic into PostgreSQL and Redis; measured from its first committed batch to the
  batch that stores the last offset (progress read from ``learner_offsets``), so process
  start-up and group join are excluded.  ``two_consumer_events_per_s``: the same with two
  children in one group (state truncated in between).  Each is run ``repeat`` times;
  medians are reported.
* Freshness: the real relay (``personalization cdc run``) streams a second topic while
  rows are inserted at ``rate``/s in small transactions for ``duration_s``; an in-process
  learner reports, for every event, Redis write time minus ``source.ts_ms`` (the insert's
  commit time in PostgreSQL, same host clock).  The first 2 s are warm-up.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from confluent_kafka import Consumer

from personalization.cache.learner import EmbeddingCache
from personalization.changestream import pgadmin
from personalization.config import DEFAULT_EMBEDDING_DIM, Settings
from personalization.kafka import names
from personalization.kafka.envelope import parse_event_message, read_insert_fast
from personalization.kafka.topics import ensure_topics
from personalization.learner.batch import BatchResult
from personalization.learner.consumer import Learner
from personalization_dev.bench.common import bench_relay_env, percentile, scratch_database
from personalization_dev.broker import LocalBroker
from personalization_dev.relayproc import RelayProcess
from personalization_dev.synthetic import envelope, key_for, produce, producer
from personalization_dev.testing.learner import LearnerProcess, consumed_offsets, fill_population, stream_order

__all__ = ["run_learner_bench"]

BrokerChoice = Literal["local", "configured"]
PARTITIONS = 4


def _pct(values: list[float], p: float) -> float:
    return percentile(values, p) if values else 0.0


@contextlib.contextmanager
def _broker(settings: Settings, choice: BrokerChoice) -> Iterator[str]:
    if choice == "configured":
        yield settings.kafka.bootstrap_servers
        return
    with LocalBroker() as bootstrap:
        yield bootstrap


def _create_topic(bootstrap: str, topic: str) -> None:
    ensure_topics(bootstrap, [topic], partitions=PARTITIONS)


def _bare_consume(bootstrap: str, topic: str, count: int, timeout_s: float) -> float:
    """Messages/s of a bare consume loop over ``count`` messages (first to last message)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 3000,
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    first = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=5000, timeout=0.5):
                if m.error() is None:
                    if seen == 0:
                        first = time.perf_counter()
                    seen += 1
        elapsed = time.perf_counter() - first
    finally:
        consumer.close()
    if seen < count:
        raise TimeoutError(f"bare consumer read {seen} of {count} messages")
    return (count - 1) / elapsed


def _parse_only(messages: list[tuple[bytes, bytes]]) -> float:
    """Envelopes/s of the learner's reader alone (in process, no I/O): the Python floor.

    As the batch reads them: the fast insert reader, ``parse_event_message`` for the rest.
    """
    started = time.perf_counter()
    for key, value in messages:
        if read_insert_fast(value) is None:
            parse_event_message(key, value)
    return len(messages) / (time.perf_counter() - started)


def _truncate_state(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE user_signal_scores, user_embeddings, learner_rebuilds, learner_offsets")


def _drain(
    url: str, env: dict[str, str], group: str, topic: str, ends: dict[int, int], members: int, timeout_s: float
) -> float:
    """Events/s of ``members`` learner children draining the topic (first commit to last)."""
    total = sum(ends.values())
    procs = [
        LearnerProcess(
            {**env, "PERSONALIZATION_LEARNER_GROUP_ID": group, "PERSONALIZATION_LEARNER_KAFKA_GROUP_ID": f"{group}-k"}
        )
        for _ in range(members)
    ]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        first_t = 0.0
        first_n = 0
        while True:
            done = consumed_offsets(url, group, topic)
            n = sum(min(done.get(p, 0), e) for p, e in ends.items())
            now = time.perf_counter()
            if n and not first_t:
                first_t, first_n = now, n
            if n >= total:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"learners stored {n} of {total}:\n" + procs[0].output()[-2000:])
            time.sleep(0.01)
        return (total - first_n) / (now - first_t) if now > first_t else float("nan")
    finally:
        for p in procs:
            p.close()


# Long on purpose (~90 lines): relay, learner and inserter are started, paced and torn down together;
# the phases share their processes and clocks, so one function keeps the start/stop pairing visible.
def _freshness(
    url: str,
    bootstrap: str,
    redis_url: str,
    users: list[uuid.UUID],
    contents: list[str],
    dim: int,
    rate: int,
    duration_s: float,
    timeout_s: float,
) -> list[tuple[float, float | None]]:
    tag = f"lf{os.getpid()}{uuid.uuid4().hex[:4]}"
    cdc = Settings(
        database={"url": url},
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": tag},
        cdc={"slot_name": tag, "publication_name": tag, "metrics_port": 0},
    )
    _create_topic(bootstrap, names.events_topic(tag))
    env = bench_relay_env(url, bootstrap, tag)
    # (commit time, commit -> Redis ms, commit -> Kafka message timestamp ms)
    samples: list[tuple[float, float, float | None]] = []
    lock = threading.Lock()

    def on_committed(result: BatchResult, written_at: float) -> None:
        with lock:
            for _, _, commit_ms, kafka_ms in result.applied:
                if commit_ms is not None:
                    relay_ms = None if kafka_ms is None else float(kafka_ms - commit_ms)
                    samples.append((commit_ms / 1000, (written_at - commit_ms / 1000) * 1000, relay_ms))

    settings = Settings(
        database={"url": url},
        redis={"url": redis_url},
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": tag},
        learner={"group_id": f"{tag}-fresh", "session_timeout_ms": 3000, "follow_profiles": False,
                 "redis_resync_s": 0},
        embedding={"dim": dim},
    )
    stop = threading.Event()
    assigned = threading.Event()
    learner = Learner(settings, stop=stop, on_committed=on_committed)
    thread = threading.Thread(target=learner.run, kwargs={"on_assigned": assigned.set}, daemon=True)
    thread.start()
    relay = RelayProcess(env)
    rng = random.Random(5)
    try:
        if not assigned.wait(60):
            raise TimeoutError("the learner got no partitions")
        relay.start()
        with psycopg.connect(url, autocommit=True) as conn:
            # Probe until the relay delivers (the slot streams from its creation on).
            began = time.monotonic()
            while not samples:
                if time.monotonic() - began > timeout_s:
                    raise TimeoutError("no event reached Redis through the relay:\n" + relay.output()[-2000:])
                conn.execute(_INSERT, (users[0], contents[0], datetime.now(UTC)))
                time.sleep(0.05)
            # Fixed rate in transactions of 10 rows every 10 ms (1000/s by default).
            per_tick = max(1, rate // 100)
            tick = per_tick / rate
            start = time.monotonic()
            sent = 0
            next_t = start
            with conn.cursor() as cur:
                while time.monotonic() - start < duration_s:
                    with conn.transaction():
                        cur.executemany(
                            _INSERT,
                            [(rng.choice(users), rng.choice(contents), datetime.now(UTC)) for _ in range(per_tick)],
                        )
                    sent += per_tick
                    next_t += tick
                    pause = next_t - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
            insert_end = time.time()
        wait_until = time.monotonic() + timeout_s
        while time.monotonic() < wait_until:
            with lock:
                late = [s for s in samples if s[0] >= insert_end - 0.5]
            if late:
                break
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        relay.stop()
        relay.close()
        stop.set()
        thread.join(timeout=30)
        with contextlib.suppress(Exception), pgadmin.connect(cdc) as c:
            pgadmin.drop_slot_and_publication(c, cdc, keep_offsets=False)
    first_commit = min(s[0] for s in samples)
    return [(lat, relay) for t, lat, relay in samples if t >= first_commit + 2.0]


_INSERT = (
    "INSERT INTO personalization_events (user_id, content_id, content_type, signal_type, signal_weight, occurred_at) "
    "VALUES (%s, %s, 'verse', 'read', 0.500, %s)"
)


# Long on purpose (~85 lines): the benchmark's phases in order (baseline, one and two consumers,
# freshness), each measured against the baseline of the same run.
def run_learner_bench(
    settings: Settings,
    *,
    events: int = 200_000,
    users: int = 5000,
    contents: int = 2000,
    dim: int = DEFAULT_EMBEDDING_DIM,
    rate: int = 1000,
    duration_s: float = 15.0,
    repeat: int = 1,
    broker: BrokerChoice = "local",
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring) and return its JSON-ready results."""
    with _broker(settings, broker) as bootstrap, scratch_database(settings.database.url, "learner") as url:
        fill_started = time.perf_counter()
        pop = fill_population(url, users=users, contents=contents, events=events, dim=dim, seed=11)
        prefix = f"lb{os.getpid()}{uuid.uuid4().hex[:4]}"
        topic = names.events_topic(prefix)
        _create_topic(bootstrap, topic)
        ordered = stream_order(pop.rows)
        ends = produce(producer(bootstrap), topic, ordered, topic_prefix=prefix)
        parse_rate = _parse_only([(key_for(r.user_id), envelope(r, topic_prefix=prefix)) for r in ordered])
        fill_s = time.perf_counter() - fill_started
        env = {
            "PERSONALIZATION_DATABASE_URL": url,
            "PERSONALIZATION_REDIS_URL": settings.redis.url,
            "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PERSONALIZATION_KAFKA_TOPIC_PREFIX": prefix,
            "PERSONALIZATION_LEARNER_SESSION_TIMEOUT_MS": "3000",
            "PERSONALIZATION_LEARNER_FOLLOW_PROFILES": "false",
            "PERSONALIZATION_LEARNER_METRICS_PORT": "0",
            "PERSONALIZATION_LEARNER_REDIS_RESYNC_S": "0",
            "PERSONALIZATION_EMBEDDING_DIM": str(dim),
        }
        bare: list[float] = []
        one: list[float] = []
        two: list[float] = []
        for _ in range(repeat):
            # Three passes: one pass lasts a fraction of a second, and a single broker stall
            # in it (seen twice in ~10 runs here: ~120k/s instead of 0.6-1.4M/s) would
            # otherwise set the baseline.
            bare.extend(_bare_consume(bootstrap, topic, events, timeout_s) for _ in range(3))
            _truncate_state(url)
            one.append(_drain(url, env, f"bench1-{uuid.uuid4().hex[:6]}", topic, ends, 1, timeout_s))
            _truncate_state(url)
            two.append(_drain(url, env, f"bench2-{uuid.uuid4().hex[:6]}", topic, ends, 2, timeout_s))
        _truncate_state(url)
        try:
            fresh_pairs = _freshness(
                url, bootstrap, settings.redis.url, pop.users, pop.content_ids, dim, rate, duration_s, timeout_s
            )
        finally:
            # The bench users' keys are not worth keeping for their 6 h TTL.
            EmbeddingCache(settings.redis.url).apply([], pop.users)
    fresh = [lat for lat, _ in fresh_pairs]
    relay = [r for _, r in fresh_pairs if r is not None]
    bare_m, one_m, two_m = statistics.median(bare), statistics.median(one), statistics.median(two)
    return {
        "one_consumer_events_per_s": round(one_m),
        "two_consumer_events_per_s": round(two_m),
        "bare_consume_per_s": round(bare_m),
        # Reference: parsing the same envelopes alone, no Kafka, PostgreSQL or Redis.
        "parse_only_per_s": round(parse_rate),
        "one_consumer_ratio": round(one_m / bare_m, 3),
        "two_consumer_speedup": round(two_m / one_m, 3),
        "freshness_p50_ms": round(statistics.median(fresh), 1) if fresh else None,
        "freshness_p99_ms": round(_pct(fresh, 99), 1) if fresh else None,
        "freshness_events": len(fresh),
        # The relay's share: commit -> Kafka message timestamp (the relay's produce time).
        "freshness_relay_p50_ms": round(statistics.median(relay), 1) if relay else None,
        "freshness_relay_p99_ms": round(_pct(relay, 99), 1) if relay else None,
        "freshness_rate_per_s": rate,
        "events": events,
        "users": users,
        "contents": contents,
        "dim": dim,
        "partitions": PARTITIONS,
        "repeat": repeat,
        "fill_s": round(fill_s, 1),
        "runs_one_consumer": [round(x) for x in one],
        "runs_two_consumer": [round(x) for x in two],
        "runs_bare": [round(x) for x in bare],
    }
