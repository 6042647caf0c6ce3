"""``personalization bench erase``: erase requests at millions of events and keys, against bare SQL.

A scratch database gets ``events`` rows (generated inside PostgreSQL with generate_series)
over ``users`` profiles; ``sequential + concurrent + 1`` of those users have
``user_events`` events each over ``sessions`` sessions, traits, and a full set of Redis
keys (signals, preferences and its generation token, embedding, flag, session lists);
``redis_keys`` filler keys make the keyspace the size of a deployment's.  The rollups are
refreshed so every victim is in them.  Then, in one process that also runs the erasure
worker (as every API process does):

* ``request_p50_s`` / ``request_p99_s``: ``sequential`` erase requests one after another;
* ``concurrent_answered_s``: ``concurrent`` erase requests started at once, until the last
  one answered;
* ``concurrent_complete_s``: from their start until the worker completed the last of them
  (rollups refreshed, tombstones acknowledged), ``rollup_refreshes`` how many refreshes
  that took for all of them.

Baselines measured in the same run: ``baseline_delete_s`` (one victim's events and profile
deleted with bare SQL, the floor of any erase), ``baseline_refresh_s`` (a bare ``REFRESH
MATERIALIZED VIEW CONCURRENTLY``, what every erase used to wait for), ``baseline_scan_s``
(one SCAN of the whole keyspace for a user's hash tag, what every erase used to run).
Filler keys are named, so they are deleted by name at the end (the Redis db is not flushed).
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
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from personalization.cache import keys
from personalization.composition import open_platform
from personalization.config import Settings
from personalization.datarights.erase import Eraser, cdc_topics
from personalization.datarights.worker import REFRESHES
from personalization.workers import background_workers
from personalization_dev.bench.common import percentile
from personalization_dev.bench.ingest import scratch_database

_FILLER_BATCH = 5000
# Background events per load transaction.
_LOAD_CHUNK = 250_000


def _kafka_reachable(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        # log_level 0: a missing broker is an expected answer here, not console noise.
        probe = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers, "socket.timeout.ms": 2000,
                             "log_level": 0})
        probe.list_topics(timeout=2)
        return True
    except Exception:  # any failure means: start a local broker and say so
        return False


def _load(url: str, users: int, events: int, victims: list[uuid.UUID], user_events: int, sessions: int) -> None:
    background = events - user_events * len(victims)
    if background < 0:
        raise ValueError("events must exceed user_events * victims")
    with psycopg.connect(url) as conn:
        # Background users get ids computed from their number, so the events below name them
        # directly (indexing an array of 200k ids per row costs more than the insert itself).
        conn.execute("INSERT INTO user_profile (user_id, denomination, privacy_level) "
                     "SELECT md5('bench-u' || i)::uuid, 'baptist', 'standard' FROM generate_series(0, %s - 1) i",
                     (users - len(victims),))
        conn.execute("INSERT INTO user_profile (user_id, denomination) SELECT unnest(%s::uuid[]), 'methodist'",
                     (victims,))
        conn.execute(
            "INSERT INTO user_traits (trait_id, user_id, trait_type, trait_value) "
            "SELECT gen_random_uuid(), v, t, '\"x\"'::jsonb FROM unnest(%s::uuid[]) v, "
            "unnest(ARRAY['tone', 'language', 'content_format']) t",
            (victims,),
        )
        conn.commit()
        # In chunks, each its own transaction: a transaction open for minutes holds up everyone
        # else's logical slot creation on the cluster (a CDC relay starting) and vacuum.
        for lo in range(1, background + 1, _LOAD_CHUNK):
            conn.execute(
                """
                INSERT INTO personalization_events (user_id, session_id, content_id, content_type, signal_type,
                                                    signal_weight, metadata, occurred_at)
                SELECT md5('bench-u' || (g %% %(users)s))::uuid, md5('s' || (g / 25))::uuid,
                       'GEN.' || (g %% 1189), 'chapter',
                       (ARRAY['view', 'read', 'bookmark', 'share', 'skip'])[1 + g %% 5],
                       0.500, '{"screen": "reader"}'::jsonb, now() - (g %% 2592000) * interval '1 second'
                FROM generate_series(%(lo)s, %(hi)s) g
                """,
                {"users": users - len(victims), "lo": lo, "hi": min(background, lo + _LOAD_CHUNK - 1)},
            )
            conn.commit()
        conn.execute(
            """
            INSERT INTO personalization_events (user_id, session_id, content_id, content_type, signal_type,
                                                signal_weight, metadata, occurred_at)
            SELECT v, md5(v::text || (g %% %(sessions)s))::uuid, 'PSA.' || (g %% 150), 'chapter',
                   (ARRAY['view', 'read', 'bookmark'])[1 + g %% 3], 0.750, '{"screen": "reader"}'::jsonb,
                   now() - g * interval '1 minute'
            FROM unnest(%(victims)s::uuid[]) v, generate_series(1, %(n)s) g
            """,
            {"victims": victims, "n": user_events, "sessions": sessions},
        )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE personalization_events")
        conn.execute("REFRESH MATERIALIZED VIEW user_signal_rollups")


def _fill_redis(r: redis.Redis, url: str, victims: list[uuid.UUID], filler: int, tag: str) -> tuple[int, list[str]]:
    """The victims' keys and ``filler`` other keys (returned by name, for the clean-up)."""
    made = 0
    with psycopg.connect(url) as conn, r.pipeline(transaction=False) as pipe:
        for v in victims:
            sessions = [row[0] for row in conn.execute(
                "SELECT DISTINCT session_id FROM personalization_events WHERE user_id = %s", (v,))]
            pipe.zadd(keys.user_signals(v), {str(uuid.uuid4()): time.time() for _ in range(200)})
            pipe.hset(keys.user_preferences(v), mapping={"denomination": "methodist", "tone": "x"})
            pipe.set(keys.user_preferences_gen(v), uuid.uuid4().hex)
            pipe.set(keys.user_embedding(v), b"\x00" * 1536)
            pipe.set(keys.feature_flag(keys.PERSONALIZATION_FLAG, v), "1")
            for s in sessions:
                pipe.lpush(keys.session_recent_content(s), "PSA.1", "PSA.2")
            made += 5 + len(sessions)
        pipe.execute()
    names = [f"bench-erase:{tag}:{i}" for i in range(filler)]
    for i in range(0, filler, _FILLER_BATCH):
        r.mset(dict.fromkeys(names[i : i + _FILLER_BATCH], "x"))
    return made, names


def _drop_filler(r: redis.Redis, names: list[str]) -> None:
    for i in range(0, len(names), _FILLER_BATCH):
        r.unlink(*names[i : i + _FILLER_BATCH])


def _bare_delete(url: str, victim: uuid.UUID) -> float:
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        conn.execute("DELETE FROM personalization_events WHERE user_id = %s", (victim,))
        conn.execute("DELETE FROM user_traits WHERE user_id = %s", (victim,))
        conn.execute("DELETE FROM user_profile WHERE user_id = %s", (victim,))
        conn.commit()
        return time.perf_counter() - t0


def _bare_refresh(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY user_signal_rollups")
        return time.perf_counter() - t0


def _bare_scan(r: redis.Redis, victim: uuid.UUID) -> float:
    t0 = time.perf_counter()
    for _ in r.scan_iter(match=keys.user_tag_pattern(victim), count=1000):
        pass
    return time.perf_counter() - t0


async def _erase_phases(settings: Settings, sequential: list[uuid.UUID], concurrent: list[uuid.UUID],
                        timeout_s: float) -> dict[str, Any]:
    async with open_platform(settings) as p, background_workers(p, ("erasures",)) as workers:
        eraser = Eraser(p.db, p.redis, settings, wake=workers.wake_erasures)
        times: list[float] = []
        seq_ids: list[uuid.UUID] = []
        t_seq = time.perf_counter()
        for v in sequential:
            t0 = time.perf_counter()
            seq_ids.append((await eraser.erase(v, "bench")).erasure_id)
            times.append(time.perf_counter() - t0)
        # The burst starts on an idle worker: the sequential erasures are complete first.
        seq_left = await _wait_complete(p.db, seq_ids, t_seq + timeout_s)
        sequential_complete_s = time.perf_counter() - t_seq
        refreshes_before = REFRESHES._value.get()
        answered: list[float] = []

        async def one(v: uuid.UUID, t0: float) -> uuid.UUID:
            report = await eraser.erase(v, "bench")
            answered.append(time.perf_counter() - t0)
            return report.erasure_id

        t0 = time.perf_counter()
        ids = await asyncio.gather(*(one(v, t0) for v in concurrent))
        answered_s = time.perf_counter() - t0
        pending = await _wait_complete(p.db, list(ids), t0 + timeout_s)
        complete_s = time.perf_counter() - t0
        row = await p.db.fetch_one("SELECT count(*) AS n FROM erasures WHERE completed_at IS NULL", {})
        return {
            "request_p50_s": round(statistics.median(times), 4),
            "request_p99_s": round(percentile(times, 99), 4),
            "request_max_s": round(max(times), 4),
            "sequential_complete_s": round(sequential_complete_s, 4) if not seq_left else None,
            "concurrent_answered_s": round(answered_s, 4),
            "concurrent_request_p50_s": round(statistics.median(answered), 4),
            "concurrent_complete_s": round(complete_s, 4) if not pending else None,
            "concurrent_incomplete": pending,
            "rollup_refreshes_for_concurrent": int(REFRESHES._value.get() - refreshes_before),
            "erasures_incomplete_at_end": int(row["n"]) if row else -1,
        }


async def _wait_complete(db: Any, ids: list[uuid.UUID], deadline: float) -> int:
    """Poll until every erasure of ``ids`` is complete or the deadline passed; returns how many are not."""
    pending = len(ids)
    while pending and time.perf_counter() < deadline:
        row = await db.fetch_one("SELECT count(*) AS n FROM erasures WHERE erasure_id = ANY(%(ids)s) "
                                 "AND completed_at IS NULL", {"ids": ids})
        pending = int(row["n"]) if row else len(ids)
        if pending:
            await asyncio.sleep(0.05)
    return pending


def run_erase_bench(settings: Settings, *, users: int = 200_000, events: int = 6_000_000, user_events: int = 1000,
                    sessions: int = 50, sequential: int = 20, concurrent: int = 20,
                    redis_keys: int = 2_000_000, timeout_s: float = 300.0) -> dict[str, Any]:
    """Load, then time the baselines, the sequential and the concurrent erases; returns the figures.

    Without a reachable Kafka at the configured address, a local Tansu broker is started
    for the run, so every erasure includes its tombstones.
    """
    with contextlib.ExitStack() as stack:
        kafka_source = "configured"
        if not _kafka_reachable(settings):
            from personalization_dev.broker import LocalBroker

            bootstrap = stack.enter_context(LocalBroker())
            settings = settings.replace(kafka={"bootstrap_servers": bootstrap})
            kafka_source = "local Tansu broker"
        from personalization.kafka.topics import ensure_topics

        ensure_topics(settings.kafka.bootstrap_servers, cdc_topics(settings))
        result = _run(settings.replace(erase={"kafka_tombstones": True}), users, events, user_events,
                      sessions, sequential, concurrent, redis_keys, timeout_s)
        result["kafka"] = kafka_source
        return result


def _run(settings: Settings, users: int, events: int, user_events: int, sessions: int, sequential: int,
         concurrent: int, redis_keys: int, timeout_s: float) -> dict[str, Any]:
    people = [uuid.uuid4() for _ in range(sequential + concurrent + 1)]
    baseline_victim, seq, conc = people[0], people[1 : 1 + sequential], people[1 + sequential :]
    r = redis.Redis.from_url(settings.redis.url)
    filler: list[str] = []
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)
    task = progress.add_task(f"loading {events:,} events", total=None)

    def step(what: str) -> None:
        progress.update(task, description=what)

    try:
        with progress, scratch_database(settings, "erase") as url:
            t0 = time.perf_counter()
            _load(url, users, events, people, user_events, sessions)
            step(f"filling Redis to {redis_keys:,} keys")
            expected_victim_keys = len(people[1:]) * (5 + sessions)
            victim_keys, filler = _fill_redis(r, url, people[1:], max(0, redis_keys - expected_victim_keys),
                                              uuid.uuid4().hex[:8])
            load_s = time.perf_counter() - t0
            dbsize = int(r.dbsize())
            step("baselines: bare delete, bare refresh, bare SCAN")
            baseline_delete_s = _bare_delete(url, baseline_victim)
            baseline_refresh_s = _bare_refresh(url)
            baseline_scan_s = _bare_scan(r, baseline_victim)
            step(f"{sequential} erases one by one, then {concurrent} at once, until the last is complete")
            phases = asyncio.run(_erase_phases(settings.replace(database={"url": url}), seq, conc,
                                               timeout_s))
            with psycopg.connect(url) as conn:
                left = conn.execute("SELECT count(*) FROM personalization_events WHERE user_id = ANY(%s)",
                                    (people,)).fetchone()
                in_view = conn.execute("SELECT count(*) FROM user_signal_rollups WHERE user_id = ANY(%s)",
                                       (people,)).fetchone()
                total = conn.execute("SELECT count(*) FROM personalization_events").fetchone()
            keys_left = sum(int(r.exists(keys.user_embedding(v), keys.user_preferences(v))) for v in people[1:])
    finally:
        _drop_filler(r, filler)
        r.close()
    return {
        "events": events,
        "users": users,
        "user_events": user_events,
        "redis_keys": dbsize,
        **phases,
        "baseline_delete_s": round(baseline_delete_s, 4),
        "baseline_refresh_s": round(baseline_refresh_s, 4),
        "baseline_scan_s": round(baseline_scan_s, 4),
        "victim_events_left": int(left[0]) if left else -1,
        "victim_rollup_rows_left": int(in_view[0]) if in_view else -1,
        "victim_keys_left": keys_left,
        "victim_keys_made": victim_keys,
        "events_after": int(total[0]) if total else -1,
        "load_s": round(load_s, 2),
        "goal_request_p99_s": 1.0,
        "goal_concurrent_answered_s": 3.0,
    }
