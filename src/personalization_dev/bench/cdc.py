"""``personalization bench cdc``: commit-to-consume latency and burst throughput of the relay.

The benchmark works in a scratch database next to the configured one, with a slot, a
publication and a topic prefix of its own, so it can run beside a production relay:

1. an independent consumer joins the (pre-created) topic;
2. ``personalization cdc run`` is started as a child process; ``startup_s`` is the time
   from spawning it to the consumer receiving the first probe row inserted meanwhile;
3. events are committed at a fixed rate (``rate`` per second for ``duration_s``, in
   5 ms ticks, one transaction per tick as a group-committing ingest would) and each
   one's latency is consume time minus commit time (one clock, one process);
4. ``burst`` events are committed at once with COPY (in transactions of 5000 rows) and
   ``burst_events_per_s`` is burst size over the time from the start of the COPY to the
   last event consumed.

Inserts use plain psycopg (the ingest library's write is the same INSERT/COPY).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from personalization.changestream import pgadmin
from personalization.config import Settings
from personalization.kafka import names
from personalization.kafka.topics import ensure_topics
from personalization_dev.bench.common import bench_relay_env, percentile, scratch_database
from personalization_dev.broker import LocalBroker
from personalization_dev.relayproc import RelayProcess

__all__ = ["main", "run_cdc_bench"]

BrokerChoice = Literal["auto", "local", "configured"]

_INSERT = (
    "INSERT INTO personalization_events (user_id, session_id, content_id, content_type, "
    "signal_type, signal_weight, metadata, occurred_at) "
    "VALUES (%s, %s, %s, 'verse', 'view', 0.250, %s, %s) RETURNING event_id"
)


@contextlib.contextmanager
def _broker(settings: Settings, choice: BrokerChoice) -> Iterator[str]:
    if choice == "configured":
        yield settings.kafka.bootstrap_servers
        return
    if choice == "auto":
        admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers, "log_level": 0})
        try:
            admin.list_topics(timeout=3)
        except Exception:
            pass
        else:
            yield settings.kafka.bootstrap_servers
            return
    with LocalBroker() as bootstrap:
        yield bootstrap


class _Collector(threading.Thread):
    """Independent consumer: first arrival time per event_id, duplicates counted.

    The consumer is created, polled and closed on this thread only (confluent-kafka
    consumers are not thread-safe); other threads read the dictionaries it fills.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="bench-consumer", daemon=True)
        self._servers = bootstrap
        self._topic = topic
        self.arrivals: dict[int, float] = {}
        # Kafka CreateTime (set by the relay's producer) per event: splits the latency.
        self.produced: dict[int, float] = {}
        self.probes: dict[str, float] = {}
        self.duplicates = 0
        self.assigned = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self._servers,
                "group.id": f"bench-cdc-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
                "socket.nagle.disable": True,
                "fetch.min.bytes": 1,
            }
        )

        # Partitions are assigned by hand, not through a consumer group: Tansu's group
        # coordinator can time sessions out under load, and each rebalance would re-read
        # the topic and stall the measurement.
        metadata = consumer.list_topics(self._topic, timeout=30)
        partitions = sorted(metadata.topics[self._topic].partitions)
        consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
        self.assigned.set()
        try:
            while not self.stop.is_set():
                for message in consumer.consume(num_messages=2000, timeout=0.05):
                    now = time.time()
                    value = message.value()
                    if message.error() is not None or value is None:
                        continue
                    after = json.loads(value)["after"] or {}
                    content_id = str(after.get("content_id", ""))
                    if content_id.startswith("probe-"):
                        self.probes.setdefault(content_id, now)
                        continue
                    event_id = int(after["event_id"])
                    if event_id in self.arrivals:
                        self.duplicates += 1
                    else:
                        self.arrivals[event_id] = now
                        self.produced[event_id] = message.timestamp()[1] / 1000
        finally:
            consumer.close()


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _fixed_rate(
    conn: psycopg.Connection[Any], rate: int, duration_s: float, users: list[uuid.UUID]
) -> dict[int, float]:
    """Commit ``rate`` events per second; returns commit wall-clock time per event_id."""
    tick_s = 0.005
    per_tick = max(1, round(rate * tick_s))
    commits: dict[int, float] = {}
    ticks = int(duration_s / tick_s)
    start = time.monotonic()
    now = datetime.now(UTC)
    for tick in range(ticks):
        delay = start + tick * tick_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ids: list[int] = []
        with conn.transaction(), conn.cursor() as cur:
            for i in range(per_tick):
                cur.execute(
                    _INSERT,
                    (users[(tick + i) % len(users)], None, f"rate-{tick}-{i}", None, now),
                )
                row = cur.fetchone()
                assert row is not None
                ids.append(int(row[0]))
        committed = time.time()
        for event_id in ids:
            commits[event_id] = committed
    return commits


def _burst(conn: psycopg.Connection[Any], count: int, users: list[uuid.UUID]) -> None:
    now = datetime.now(UTC)
    chunk = 5000
    for first in range(0, count, chunk):
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(
                "COPY personalization_events (user_id, content_id, content_type, signal_type, "
                "signal_weight, occurred_at) FROM STDIN"
            ) as copy,
        ):
            for i in range(first, min(count, first + chunk)):
                copy.write_row((users[i % len(users)], f"burst-{i}", "verse", "view", "0.250", now))


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# Long on purpose (~80 lines): the benchmark's phases in order (start-up, steady rate, burst)
# around one relay process; splitting it would scatter the relay's lifetime.
def run_cdc_bench(
    settings: Settings,
    *,
    rate: int = 1000,
    duration_s: float = 10.0,
    burst: int = 50_000,
    broker: BrokerChoice = "auto",
    timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Run the benchmark and return its results (see the module docstring for the method)."""
    tag = f"bench{os.getpid()}{uuid.uuid4().hex[:4]}"
    with _broker(settings, broker) as bootstrap, scratch_database(settings.database.url, "cdc") as url:
        cdc = Settings(
            database={"url": url},
            kafka={"bootstrap_servers": bootstrap, "topic_prefix": tag},
            cdc={"slot_name": tag, "publication_name": tag, "metrics_port": 0},
        )
        # Pre-created so the consumer is assigned before the relay starts (the handle must
        # outlive the future, hence the variable).
        ensure_topics(bootstrap, [names.events_topic(tag)])
        collector = _Collector(bootstrap, names.events_topic(tag))
        collector.start()
        users = [uuid.uuid4() for _ in range(200)]
        env = bench_relay_env(url, bootstrap, tag)
        relay = RelayProcess(env)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                with conn.cursor() as cur, cur.copy("COPY user_profile (user_id) FROM STDIN") as cp:
                    for user in users:
                        cp.write_row((user,))
                _wait_for(collector.assigned.is_set, 60, "the consumer's partition assignment")
                spawned = time.time()
                relay.spawn()
                # Probes until one arrives: the relay streams from its slot's creation on.
                probe = 0
                while not collector.probes:
                    if time.time() - spawned > timeout_s:
                        raise TimeoutError("relay did not deliver a probe row:\n" + relay.output())
                    conn.execute(_INSERT, (None, None, f"probe-{probe}", None, datetime.now(UTC)))
                    probe += 1
                    time.sleep(0.05)
                startup_s = min(collector.probes.values()) - spawned

                commits = _fixed_rate(conn, rate, duration_s, users)
                _wait_for(
                    lambda: all(e in collector.arrivals for e in commits),
                    timeout_s,
                    "the fixed-rate events",
                )
                latencies = [(collector.arrivals[e] - t) * 1000 for e, t in commits.items()]
                to_kafka = [(collector.produced[e] - t) * 1000 for e, t in commits.items()]
                rss_mb = _rss_mb(relay.pid)

                before = len(collector.arrivals)
                burst_start = time.time()
                _burst(conn, burst, users)
                copy_s = time.time() - burst_start
                _wait_for(lambda: len(collector.arrivals) - before >= burst, timeout_s, "the burst")
                burst_s = max(collector.arrivals.values()) - burst_start
        finally:
            relay.stop()
            relay.close()
            collector.stop.set()
            collector.join(timeout=30)
            with pgadmin.connect(cdc) as conn:
                pgadmin.drop_slot_and_publication(conn, cdc, keep_offsets=False)
    return {
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1),
        # Commit to the relay's produce() call (Debezium + relay), ms resolution.
        "relay_p50_ms": round(statistics.median(to_kafka), 1),
        "relay_p99_ms": round(percentile(to_kafka, 99), 1),
        "rate_per_s": rate,
        "rate_events": len(latencies),
        "burst_events": burst,
        "burst_events_per_s": round(burst / burst_s),
        "burst_copy_s": round(copy_s, 2),
        "startup_s": round(startup_s, 2),
        "duplicates": collector.duplicates,
        "relay_rss_mb": None if rss_mb is None else round(rss_mb),
    }


def main(argv: list[str] | None = None) -> int:
    """Typer-free entry: ``python -m personalization_dev.bench.cdc [--json] ...``."""
    parser = argparse.ArgumentParser(prog="personalization bench cdc", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=50_000)
    parser.add_argument("--broker", choices=["auto", "local", "configured"], default="auto")
    args = parser.parse_args(argv)
    result = run_cdc_bench(
        Settings(),
        rate=args.rate,
        duration_s=args.duration,
        burst=args.burst,
        broker=args.broker,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
