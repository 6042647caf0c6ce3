"""PostgreSQL or Redis down: the learner pauses, commits nothing, and resumes without loss.

The learner reaches both services through a TCP relay of this test that can be cut (every
connection reset, new ones refused) and restored on the same port, so the real servers
stay up for everyone else.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest
import redis
from prometheus_client import generate_latest

from personalization.cache import keys
from personalization.config import Settings
from personalization.kafka import names
from personalization.learner import metrics
from personalization.learner.batch import BatchResult
from personalization.learner.consumer import Learner
from personalization.learner.recompute import recompute_users
from personalization_dev.synthetic import produce, producer
from personalization_dev.testing.learner import consumed_offsets, fill_population, stream_order, wait_consumed
from personalization_dev.testing.waiting import wait_until

DIM = 8


class Cuttable:
    """A loopback TCP forwarder to ``target`` that can refuse and reset connections."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.port = self._listen.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up = True
        self.refused = 0  # connections refused while cut: the client's attempts to get back
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listen.accept()
            except OSError:
                return
            if not self.up:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Reset every open connection and refuse new ones."""
        self.up = False
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()

    def restore(self) -> None:
        """Accept and forward again."""
        self.up = True

    def close(self) -> None:
        """Stop listening and drop everything."""
        self.cut()
        self._listen.close()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(
        (parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, parts.path, parts.query, parts.fragment)
    )


@pytest.mark.parametrize("service", ["postgres", "redis"])
def test_outage_pauses_without_committing_and_resumes_without_loss(
    service: str, db_url: str, redis_url: str, kafka_bootstrap: str
) -> None:
    pg = urlsplit(db_url)
    rd = urlsplit(redis_url)
    proxy = (
        Cuttable(pg.hostname or "127.0.0.1", pg.port or 5432)
        if service == "postgres"
        else Cuttable(rd.hostname or "127.0.0.1", rd.port or 6379)
    )
    prefix = f"lf{uuid.uuid4().hex[:8]}"
    topic = names.events_topic(prefix)
    group = f"g-{uuid.uuid4().hex[:8]}"
    pop = fill_population(db_url, users=6, contents=10, events=600, dim=DIM, seed=5)
    stream = stream_order(pop.rows)
    settings = Settings(
        database={"url": _via(db_url, proxy.port) if service == "postgres" else db_url},
        redis={"url": _via(redis_url, proxy.port) if service == "redis" else redis_url},
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix},
        learner={"group_id": group, "kafka_group_id": f"k-{uuid.uuid4().hex[:8]}", "session_timeout_ms": 3000,
                 "follow_profiles": False, "retry_initial_s": 0.1, "retry_max_s": 0.5, "redis_timeout_s": 0.5},
        embedding={"dim": DIM},
    )
    # A cut that lands while the previous batch's Redis write is in flight is waited out
    # after its commit ("redis_after_commit"); one that lands before the next batch, before it.
    labels = ["postgresql"] if service == "postgres" else ["redis", "redis_after_commit"]

    def retried() -> float:
        return sum(metrics.RETRIES.labels(label)._value.get() for label in labels)

    retries_before = retried()
    committed: list[BatchResult] = []
    stop = threading.Event()
    learner = Learner(settings, stop=stop, on_committed=lambda r, _t: committed.append(r))
    thread = threading.Thread(target=learner.run, daemon=True)
    thread.start()
    prod = producer(kafka_bootstrap)
    try:
        ends = produce(prod, topic, stream[:200], topic_prefix=prefix)
        wait_consumed(db_url, group, topic, ends, timeout_s=60)

        proxy.cut()
        before = consumed_offsets(db_url, group, topic)
        ends = produce(prod, topic, stream[200:400], topic_prefix=prefix)
        # The learner fails on the new batch and keeps trying to reach the service: a batch
        # retried and three more connection attempts refused (its back-off goes 0.1, 0.2, 0.4 s).
        wait_until(lambda: retried() > retries_before, 30, f"a batch retried after the {service} cut")
        refused = proxy.refused
        wait_until(lambda: proxy.refused >= refused + 3, 30,
                   lambda: f"three more connections to {service} refused ({proxy.refused - refused})")
        # Nothing of the new messages was committed while the service was down.
        assert consumed_offsets(db_url, group, topic) == before
        assert thread.is_alive()
        assert retried() > retries_before

        proxy.restore()
        wait_consumed(db_url, group, topic, ends, timeout_s=60)
        ends = produce(prod, topic, stream[400:], topic_prefix=prefix)
        wait_consumed(db_url, group, topic, ends, timeout_s=60)
    finally:
        stop.set()
        thread.join(timeout=30)
        proxy.close()
    assert not thread.is_alive()
    exposed = generate_latest().decode()
    for name in (
        "personalization_learner_batch_size_count",
        'personalization_learner_freshness_seconds_count{since="commit"}',
        'personalization_learner_messages_total{outcome="applied"}',
        "personalization_learner_events_per_second",
    ):
        assert name in exposed, name

    with psycopg.connect(db_url) as conn:
        online: dict[uuid.UUID, bytes] = dict(conn.execute("SELECT user_id, embedding FROM user_embeddings").fetchall())
        counted = conn.execute("SELECT sum(event_count) FROM user_signal_scores").fetchone()
    assert counted is not None and int(counted[0]) == len(pop.rows)
    cache = redis.Redis.from_url(redis_url)
    for user_id, vector in online.items():
        assert cache.get(keys.user_embedding(user_id)) == vector
    recompute_users(Settings(database={"url": db_url}, redis={"url": redis_url}, embedding={"dim": DIM}))
    with psycopg.connect(db_url) as conn:
        rebuilt: dict[uuid.UUID, bytes] = dict(
            conn.execute("SELECT user_id, embedding FROM user_embeddings").fetchall()
        )
    assert set(rebuilt) == set(online)
    for user_id, vector in online.items():
        a = np.frombuffer(vector, dtype="<f4").astype(np.float64)
        b = np.frombuffer(rebuilt[user_id], dtype="<f4").astype(np.float64)
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.99999
