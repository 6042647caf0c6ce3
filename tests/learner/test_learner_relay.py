"""End to end through the real Debezium relay: inserts -> relay -> learner -> PostgreSQL and Redis.

Also covers what only the real stream carries: transactions that commit out of event_id
order, relay re-sends after a kill -9 of the relay, user_profile deletes and privacy
changes (profile topic), and an erase tombstone.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
import pytest
import redis

from personalization.cache import keys
from personalization.config import Settings
from personalization.kafka import names
from personalization.kafka.envelope import EventRecord, FastInsert, parse_event_message, read_insert_fast
from personalization.learner import batch
from personalization.learner.consumer import Learner
from personalization.learner.recompute import recompute_users
from personalization_dev.relayproc import RelayProcess
from personalization_dev.synthetic import key_for, produce, producer
from personalization_dev.testing.kafka import relay_env
from personalization_dev.testing.waiting import wait_until

DIM = 8
INSERT = (
    "INSERT INTO personalization_events (user_id, content_id, content_type, signal_type, signal_weight, occurred_at) "
    "VALUES (%s, %s, 'verse', %s, %s, now() - make_interval(hours => %s))"
)


@pytest.fixture
def stack(db_url: str, redis_url: str, kafka_bootstrap: str) -> Iterator[tuple[dict[str, str], Settings]]:
    prefix = f"lr{uuid.uuid4().hex[:8]}"
    env = relay_env(db_url, kafka_bootstrap, prefix)
    settings = Settings(
        database={"url": db_url},
        redis={"url": redis_url},
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix},
        learner={"group_id": f"g-{prefix}", "session_timeout_ms": 3000},
        embedding={"dim": DIM},
    )
    yield env, settings
    with psycopg.connect(db_url, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
            (env["PERSONALIZATION_CDC_SLOT_NAME"],),
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def _cosine(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, dtype="<f4").astype(np.float64)
    y = np.frombuffer(b, dtype="<f4").astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _embedding(conn: psycopg.Connection[Any], user: UUID) -> bytes | None:
    row = conn.execute("SELECT embedding FROM user_embeddings WHERE user_id = %s", (user,)).fetchone()
    return None if row is None else bytes(row[0])


def test_relay_to_redis_with_privacy_deletes_and_relay_crash(
    stack: tuple[dict[str, str], Settings], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, settings = stack
    # What the real relay writes must take the learner's fast insert reader (it hands over
    # only what is not a plain insert).
    fast_reads: list[bool] = []
    missed: list[bytes] = []

    def reading(value: bytes) -> FastInsert | None:
        got = read_insert_fast(value)
        fast_reads.append(got is not None)
        if got is None and isinstance(parse_event_message(None, value), EventRecord):
            missed.append(value)
        return got

    monkeypatch.setattr(batch, "read_insert_fast", reading)
    db_url = settings.database.url
    cache = redis.Redis.from_url(redis_url)
    alice, bob, carol, dave, erin = (uuid.uuid4() for _ in range(5))
    rng = np.random.default_rng(3)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for user, level in (
            (alice, "standard"),
            (bob, "limited"),
            (carol, "standard"),
            (dave, "standard"),
            (erin, "standard"),
        ):
            conn.execute("INSERT INTO user_profile (user_id, privacy_level) VALUES (%s, %s)", (user, level))
        for i in range(12):
            conn.execute(
                "INSERT INTO content_embeddings (content_id, model, dim, embedding) VALUES (%s, 'm', %s, %s)",
                (f"c{i}", DIM, rng.standard_normal(DIM).astype("<f4").tobytes()),
            )

    stop = threading.Event()
    learner = Learner(settings, stop=stop)
    thread = threading.Thread(target=learner.run, daemon=True)
    relay = RelayProcess(env)
    relay2: RelayProcess | None = None
    try:
        thread.start()
        relay.start()
        with psycopg.connect(db_url, autocommit=True) as conn, psycopg.connect(db_url) as other:
            # Commit order differs from event_id order: the first transaction takes its id
            # first but commits last.
            other.execute(INSERT, (alice, "c1", "read", "0.900", 5))
            conn.execute(INSERT, (alice, "c2", "skip", "0.300", 1))
            other.commit()
            for i, user in enumerate((alice, bob, carol, dave, erin) * 6):
                conn.execute(INSERT, (user, f"c{i % 12}", ("view", "share", "bookmark")[i % 3], "0.500", i))
            wait_until(
                lambda: all(cache.exists(keys.user_embedding(u)) for u in (alice, carol, dave, erin)),
                60,
                "embeddings in Redis",
            )
            assert not cache.exists(keys.user_embedding(bob))  # limited: no learner state

            # Kill -9 the relay while rows keep coming; the restarted relay may send some again.
            writer_stop = threading.Event()
            written = [0]

            def applied() -> int:
                row = conn.execute(
                    "SELECT coalesce(sum(event_count), 0) FROM user_signal_scores WHERE user_id IN (%s, %s)",
                    (alice, dave),
                ).fetchone()
                return int(row[0]) if row else 0

            def stored() -> int:
                row = conn.execute(
                    "SELECT count(*) FROM personalization_events WHERE user_id IN (%s, %s)", (alice, dave)
                ).fetchone()
                return int(row[0]) if row else 0

            def writer() -> None:
                with psycopg.connect(db_url, autocommit=True) as w:
                    n = 0
                    while not writer_stop.is_set():
                        w.execute(INSERT, ((alice, dave)[n % 2], f"c{n % 12}", "read", "0.250", n % 48))
                        n += 1
                        written[0] = n
                        time.sleep(0.005)  # pacing, not waiting: a steady trickle of single-row commits

            wt = threading.Thread(target=writer)
            before = stored()
            wt.start()
            # Mid-stream: the first relay is delivering the writer's rows when it dies.
            wait_until(lambda: applied() >= before + 20, 60, "20 of the writer's rows applied via the first relay")
            relay.kill()
            at_kill = written[0]
            wait_until(lambda: written[0] >= at_kill + 50, 30, "50 rows committed while no relay runs")
            relay2 = RelayProcess(env)
            relay2.start()
            # The restarted relay delivers what piled up in the slot meanwhile, rows still coming.
            piled_up = stored()
            wait_until(lambda: applied() >= piled_up, 60,
                       lambda: f"the {piled_up} rows of alice and dave applied via the restarted relay ({applied()})")
            writer_stop.set()
            wt.join()

            # A delete in SQL (bypassing any API) and a privacy change arrive on the profile topic.
            conn.execute("DELETE FROM user_profile WHERE user_id = %s", (carol,))
            conn.execute("UPDATE user_profile SET privacy_level = 'limited' WHERE user_id = %s", (dave,))
            wait_until(lambda: not cache.exists(keys.user_embedding(carol)), 60, "carol's key deleted")
            wait_until(lambda: not cache.exists(keys.user_embedding(dave)), 60, "dave's key deleted")
            assert _embedding(conn, dave) is None
            assert _embedding(conn, carol) is None  # ON DELETE CASCADE
            # Below `standard` (and after a delete) no learner state is left.
            for gone in (bob, carol, dave):
                row = conn.execute("SELECT count(*) FROM user_signal_scores WHERE user_id = %s", (gone,)).fetchone()
                assert row == (0,), gone
            # Consent given again: the learner rebuilds dave from his stored events.
            conn.execute("UPDATE user_profile SET privacy_level = 'standard' WHERE user_id = %s", (dave,))
            wait_until(lambda: cache.exists(keys.user_embedding(dave)) == 1, 60, "dave's embedding rebuilt")

            # The erase flow's tombstone (key of the user, null value) clears the cache entry.
            topic = names.events_topic(settings.kafka.topic_prefix)
            produce(producer(settings.kafka.bootstrap_servers), topic, [], raw=[(key_for(erin), None)])
            wait_until(lambda: not cache.exists(keys.user_embedding(erin)), 60, "erin's key deleted")

            # Let the stream drain.  A re-send of the restarted relay comes before anything
            # committed after it, so once one more row of each of alice and dave is applied no
            # late re-send is still on its way (and none may have counted twice).
            for user in (alice, dave):
                conn.execute(INSERT, (user, "c0", "read", "0.250", 0))
            wait_until(lambda: applied() >= stored(), 60,
                       lambda: f"every event of alice and dave applied ({applied()} of {stored()})")
            online = {u: _embedding(conn, u) for u in (alice, dave)}
            online_counts = conn.execute(
                "SELECT user_id, sum(event_count) FROM user_signal_scores GROUP BY user_id"
            ).fetchall()
    finally:
        stop.set()
        thread.join(timeout=30)
        for r in (relay, relay2):
            if r is not None:
                r.stop()
                r.close()

    assert any(fast_reads) and not missed, missed[:1]
    counts: dict[UUID, int] = {u: int(n) for u, n in online_counts}
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT count(*) FROM personalization_events WHERE user_id = %s", (alice,)).fetchone()
    assert stored is not None and counts[alice] == int(stored[0])
    for user in (alice, dave):
        assert cache.get(keys.user_embedding(user)) == online[user]
    recompute_users(Settings(database={"url": db_url}, redis={"url": redis_url}, embedding={"dim": DIM}), [alice, dave])
    with psycopg.connect(db_url) as conn:
        for user in (alice, dave):
            rebuilt = _embedding(conn, user)
            before = online[user]
            assert before is not None and rebuilt is not None
            assert _cosine(before, rebuilt) >= 0.99999
