"""``personalization bench erase``: erase one user with 10000 events among 1000000, against bare SQL.

A scratch database gets ``events`` rows (generated inside PostgreSQL) over ``users``
profiles; ``victims + 1`` of those users have ``user_events`` events each over 200
sessions, traits, and a full set of Redis keys (signals, preferences, embedding, flag,
session lists).  The rollups are refreshed so each victim is in them.  Then, in the same
run:

* ``baseline_delete_s``: one victim removed with bare SQL (DELETE of its events and
  profile in one transaction), the floor of any erase;
* ``baseline_refresh_s``: a bare ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` of the rollups
  (the erase must refresh them because the view still holds the user);
* ``erase_s``: the median over ``victims`` full erases through :class:`Eraser` (every table,
  Redis, Kafka tombstones on the CDC topics, rollups, audit), with each run's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from typing import Any

import psycopg
import redis

from personalization.cache import keys
from personalization.composition import open_platform
from personalization.config import Settings
from personalization.datarights.erase import Eraser, KafkaTombstones, cdc_topics
from personalization_dev.bench.ingest import scratch_database

_SESSIONS_PER_VICTIM = 200


def _kafka_reachable(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        # log_level 0: a missing broker is an expected answer here, not console noise.
        probe = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers, "socket.timeout.ms": 2000,
                             "log_level": 0})
        probe.list_topics(timeout=2)
        return True
    except Exception:  # any failure means: run without tombstones and say so
        return False


def _load(url: str, users: int, events: int, victims: list[uuid.UUID], user_events: int) -> None:
    background = events - user_events * len(victims)
    if background < 0:
        raise ValueError("events must exceed user_events * (victims + 1)")
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO user_profile (user_id, denomination, privacy_level) "
                     "SELECT gen_random_uuid(), 'baptist', 'standard' FROM generate_series(1, %s)",
                     (users - len(victims),))
        conn.execute("INSERT INTO user_profile (user_id, denomination) SELECT unnest(%s::uuid[]), 'methodist'",
                     (victims,))
        conn.execute(
            "INSERT INTO user_traits (trait_id, user_id, trait_type, trait_value) "
            "SELECT gen_random_uuid(), v, t, '\"x\"'::jsonb FROM unnest(%s::uuid[]) v, "
            "unnest(ARRAY['tone', 'language', 'content_format']) t",
            (victims,),
        )
        conn.execute(
            """
            WITH u AS (SELECT array_agg(user_id) AS a FROM user_profile WHERE user_id <> ALL(%(victims)s))
            INSERT INTO personalization_events (user_id, session_id, content_id, content_type, signal_type,
                                                signal_weight, metadata, occurred_at)
            SELECT u.a[1 + g %% cardinality(u.a)], md5('s' || (g / 25))::uuid, 'GEN.' || (g %% 1189), 'chapter',
                   (ARRAY['view', 'read', 'bookmark', 'share', 'skip'])[1 + g %% 5], 0.500,
                   '{"screen": "reader"}'::jsonb, now() - (g %% 2592000) * interval '1 second'
            FROM u, generate_series(1, %(n)s) g
            """,
            {"victims": victims, "n": background},
        )
        conn.execute(
            """
            INSERT INTO personalization_events (user_id, session_id, content_id, content_type, signal_type,
                                                signal_weight, metadata, occurred_at)
            SELECT v, md5(v::text || (g %% %(sessions)s))::uuid, 'PSA.' || (g %% 150), 'chapter',
                   (ARRAY['view', 'read', 'bookmark'])[1 + g %% 3], 0.750, '{"screen": "reader"}'::jsonb,
                   now() - g * interval '1 minute'
            FROM unnest(%(victims)s::uuid[]) v, generate_series(1, %(n)s) g
            """,
            {"victims": victims, "n": user_events, "sessions": _SESSIONS_PER_VICTIM},
        )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE personalization_events")
        conn.execute("REFRESH MATERIALIZED VIEW user_signal_rollups")


def _fill_redis(settings: Settings, url: str, victims: list[uuid.UUID]) -> int:
    r = redis.Redis.from_url(settings.redis_url)
    made = 0
    with psycopg.connect(url) as conn, r.pipeline(transaction=False) as pipe:
        for v in victims:
            sessions = [row[0] for row in conn.execute(
                "SELECT DISTINCT session_id FROM personalization_events WHERE user_id = %s", (v,))]
            pipe.zadd(keys.user_signals(v), {str(uuid.uuid4()): time.time() for _ in range(1000)})
            pipe.hset(keys.user_preferences(v), mapping={"denomination": "methodist", "tone": "x"})
            pipe.set(keys.user_embedding(v), b"\x00" * 1536)
            pipe.set(keys.feature_flag(keys.PERSONALIZATION_FLAG, v), "1")
            for s in sessions:
                pipe.lpush(keys.session_recent_content(s), "PSA.1", "PSA.2")
            made += 4 + len(sessions)
        pipe.execute()
    r.close()
    return made


def _bare_delete(url: str, victim: uuid.UUID) -> float:
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        conn.execute("DELETE FROM personalization_events WHERE user_id = %s", (victim,))
        conn.execute("DELETE FROM user_profile WHERE user_id = %s", (victim,))
        conn.commit()
        return time.perf_counter() - t0


def _bare_refresh(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY user_signal_rollups")
        return time.perf_counter() - t0


async def _erase_all(settings: Settings, victims: list[uuid.UUID], kafka: bool) -> list[dict[str, Any]]:
    out = []
    async with open_platform(settings) as p:
        tomb = KafkaTombstones(settings) if kafka else None
        if tomb is not None:
            await asyncio.to_thread(tomb.connect)
        eraser = Eraser(p.db, p.redis, settings.model_copy(update={"erase_kafka_tombstones": kafka}))
        try:
            for v in victims:
                t0 = time.perf_counter()
                report = await eraser.erase(v, "bench")
                elapsed = time.perf_counter() - t0
                out.append({"s": elapsed, **report.as_dict()})
        finally:
            if tomb is not None:
                tomb.close()
    return out


def run_erase_bench(settings: Settings, *, users: int = 5000, events: int = 1_000_000, user_events: int = 10_000,
                    victims: int = 3) -> dict[str, Any]:
    """Load, then time the bare baseline and ``victims`` erases; returns the figures.

    Without a reachable Kafka at the configured address, a local Tansu broker is started
    for the run, so the timed erase always includes its tombstones.
    """
    with contextlib.ExitStack() as stack:
        kafka_source = "configured"
        if not _kafka_reachable(settings):
            from personalization_dev.broker import LocalBroker

            bootstrap = stack.enter_context(LocalBroker())
            settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
            kafka_source = "local Tansu broker"
        _create_topics(settings)
        result = _run(settings, users, events, user_events, victims)
        result["kafka"] = kafka_source
        return result


def _create_topics(settings: Settings) -> None:
    from personalization.kafka.topics import ensure_topics

    ensure_topics(settings.kafka_bootstrap_servers, cdc_topics(settings))


def _run(settings: Settings, users: int, events: int, user_events: int, victims: int) -> dict[str, Any]:
    kafka = True
    people = [uuid.uuid4() for _ in range(victims + 1)]
    baseline_victim, erase_victims = people[0], people[1:]
    with scratch_database(settings, "erase") as url:
        t0 = time.perf_counter()
        _load(url, users, events, people, user_events)
        keys_made = _fill_redis(settings, url, erase_victims)
        load_s = time.perf_counter() - t0
        baseline_delete_s = _bare_delete(url, baseline_victim)
        baseline_refresh_s = _bare_refresh(url)
        bench_settings = settings.model_copy(update={"database_url": url})
        reports = asyncio.run(_erase_all(bench_settings, erase_victims, kafka))
        with psycopg.connect(url) as conn:
            left = conn.execute("SELECT count(*) FROM personalization_events WHERE user_id = ANY(%s)",
                                (erase_victims,)).fetchone()
            total = conn.execute("SELECT count(*) FROM personalization_events").fetchone()
    times = [r["s"] for r in reports]
    erase_s = statistics.median(times)
    first = reports[0]
    return {
        "events": events,
        "users": users,
        "user_events": user_events,
        "erase_s": round(erase_s, 4),
        "erase_runs_s": [round(t, 4) for t in times],
        "baseline_delete_s": round(baseline_delete_s, 4),
        "baseline_refresh_s": round(baseline_refresh_s, 4),
        "ratio_to_bare_delete_and_refresh": round(erase_s / (baseline_delete_s + baseline_refresh_s), 3),
        "timings_s": first["timings_s"],
        "removed_events": first["removed"]["personalization_events"],
        "redis_keys_removed": sum(r["redis_keys"] for r in reports),
        "redis_keys_made": keys_made,
        "kafka_tombstones": first["kafka_tombstones"],
        "rollups_refreshed": first["rollups_refreshed"],
        "victim_events_left": int(left[0]) if left else -1,
        "events_after": int(total[0]) if total else -1,
        "load_s": round(load_s, 2),
        "goal_erase_s": 2.0,
    }
