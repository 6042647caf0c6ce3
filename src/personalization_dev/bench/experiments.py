"""``personalization bench experiments``: results of a large experiment, and what exposures cost a read.

One run, real PostgreSQL and Redis, in a scratch database:

1. Load (SQL only: ``generate_series``, no row crosses the client): ``readers`` profiles,
   a flag at 50%, one exposure per reader (exposure times spread over 14 days) and
   ``events`` events around them (+-14 days, skewed activity: a few heavy readers and a
   long tail, so the pre-exposure covariate predicts the metric).  The true effect is
   known: in the ``off`` arm a share ``lift / (1 + lift)`` of the post-exposure bookmarks
   is left out, so the ``on`` arm bookmarks ``1 + lift`` times as often.
2. Results of the ``bookmarks`` metric (count, 7 days) through the use case (the
   statement plus the statistics), plain and with CUPED, alternated with the bare
   aggregate statement run by psycopg: medians of ``repeat`` runs each.
3. Flag reads in process with and without exposure recording: first reads (the group
   commit), ``concurrency`` at a time, and cached reads one at a time; median and p99.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis

from personalization.cache import keys
from personalization.composition import open_platform
from personalization.config import Settings
from personalization.core.experiments import MetricIn
from personalization.store.queries import q
from personalization_dev.bench.common import percentile, scratch_database

FLAG = "bench-experiment"
METRIC = MetricIn(signal_types=["bookmark"], aggregation="count", window_days=7)

_READER = "md5('reader' || {i})::uuid"
_ARM = "(CASE WHEN ('x' || substr(md5('arm' || {i}), 1, 8))::bit(32)::int & 1 = 1 THEN 'on' ELSE 'off' END)"
_EXPOSED = "(%(t0)s::timestamptz + make_interval(secs => ({i} %% 14) * 86400 + ({i}::bigint * 7919) %% 86400))"

LOAD_READERS = f"""
INSERT INTO user_profile (user_id, privacy_level)
SELECT {_READER.format(i='i')}, 'standard' FROM generate_series(1, %(readers)s) i
"""
LOAD_EXPOSURES = f"""
INSERT INTO experiment_exposures (flag, phase, user_id, variant, reason, rules_version, first_exposed_at)
SELECT %(flag)s, 1, {_READER.format(i='i')}, {_ARM.format(i='i')}, 'rollout', 1, {_EXPOSED.format(i='i')}
FROM generate_series(1, %(readers)s) i
"""
# Signal mix by a uniform draw: view 45%, read 25%, complete 8%, bookmark 12%, share 5%, skip 5%.
LOAD_EVENTS = f"""
INSERT INTO personalization_events (user_id, content_id, content_type, signal_type, signal_weight, occurred_at)
SELECT {_READER.format(i='u')}, 'C' || (g %% 1189), CASE WHEN g %% 5 = 0 THEN 'devotional' ELSE 'passage' END,
       sig, CASE sig WHEN 'bookmark' THEN 1.0 WHEN 'share' THEN 1.5 ELSE 0.5 END, at
FROM (
    SELECT g, u, r_thin,
           CASE WHEN r_sig < 0.45 THEN 'view' WHEN r_sig < 0.70 THEN 'read' WHEN r_sig < 0.78 THEN 'complete'
                WHEN r_sig < 0.90 THEN 'bookmark' WHEN r_sig < 0.95 THEN 'share' ELSE 'skip' END AS sig,
           {_EXPOSED.format(i='u')} AS t_exp,
           {_EXPOSED.format(i='u')} + make_interval(secs => (r_time * 28 - 14) * 86400) AS at
    FROM (
        SELECT g, 1 + floor(%(readers)s * power(random(), 2))::int AS u,
               random() AS r_sig, random() AS r_time, random() AS r_thin
        FROM generate_series(1, %(events)s) g
    ) draws
) e
WHERE NOT (sig = 'bookmark' AND at >= t_exp AND r_thin < %(thin)s AND {_ARM.format(i='u')} = 'off')
"""
EVENTS_INDEX = "personalization_events_user_time_idx"


def load(url: str, *, readers: int, events: int, lift: float, seed: float = 0.42) -> dict[str, float]:
    """Load the population, exposures and events; returns the seconds of each step."""
    t0 = datetime.now(UTC) - timedelta(days=30)
    params = {"readers": readers, "events": events, "flag": FLAG, "t0": t0, "thin": lift / (1 + lift)}
    timings: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SELECT setseed(%s)", (seed,))
        mark = time.perf_counter()
        conn.execute(LOAD_READERS, params)
        # The flag's row through the product's own path: the trigger opens phase 1.
        conn.execute("INSERT INTO feature_flags (flag, enabled, rollout_percent) VALUES (%s, true, 50)", (FLAG,))
        conn.execute(LOAD_EXPOSURES, params)
        timings["load_exposures_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        # A bulk load: the index is built once afterwards, and the foreign key (to profiles
        # generated from the same ids) is not checked row by row.
        conn.execute(f"DROP INDEX {EVENTS_INDEX}")
        conn.execute("SET session_replication_role = replica")
        conn.execute(LOAD_EVENTS, params)
        conn.execute("SET session_replication_role = origin")
        conn.execute(f"CREATE INDEX {EVENTS_INDEX} ON personalization_events (user_id, occurred_at DESC)")
        timings["load_events_s"] = time.perf_counter() - mark
        conn.execute("VACUUM ANALYZE personalization_events")
        conn.execute("VACUUM ANALYZE experiment_exposures")
    return timings


def bare_aggregate(url: str, work_mem: str) -> float:
    """Seconds of the results statement alone, run by psycopg (same work_mem as the use case)."""
    params: dict[str, Any] = {
        "flag": FLAG, "phase": 1, "window_days": METRIC.window_days, "signal_types": list(METRIC.signal_types),
        "content_types": None, "aggregation": METRIC.aggregation,
    }
    with psycopg.connect(url) as conn:
        conn.execute("SELECT set_config('work_mem', %s, true)", (work_mem,))
        conn.execute("SELECT set_config('jit', 'off', true)")
        mark = time.perf_counter()
        bounds = conn.execute(q("phase_event_range", "experiments.sql"), params).fetchone()
        assert bounds is not None
        params.update(lo=bounds[0], hi=bounds[1])
        rows = conn.execute(q("metric_aggregates", "experiments.sql"), params, prepare=False).fetchall()
        elapsed = time.perf_counter() - mark
    assert len(rows) == 2
    return elapsed


async def _results(
    settings: Settings, repeat: int, url: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    plain: list[float] = []
    cuped: list[float] = []
    bare: list[float] = []
    async with open_platform(settings) as p:
        await p.experiments.put_metric("bookmarks", METRIC)
        doc: dict[str, Any] = {}
        doc_cuped: dict[str, Any] = {}
        for _ in range(repeat):
            mark = time.perf_counter()
            doc = await p.experiments.results(FLAG, "bookmarks")
            plain.append(time.perf_counter() - mark)
            mark = time.perf_counter()
            doc_cuped = await p.experiments.results(FLAG, "bookmarks", cuped=True)
            cuped.append(time.perf_counter() - mark)
            bare.append(await asyncio.to_thread(bare_aggregate, url, settings.experiments.results_work_mem))
    return doc, doc_cuped, {
        "results_median_s": statistics.median(plain),
        "results_cuped_median_s": statistics.median(cuped),
        "bare_sql_median_s": statistics.median(bare),
    }


async def _reads(settings: Settings, users: list[uuid.UUID], flag: str, concurrency: int) -> tuple[list[float], ...]:
    """(first-read latencies, cached-read latencies) in seconds."""
    async with open_platform(settings) as p:
        await p.serving.flags.rules(flag)  # rules loaded and published before timing

        async def run(batch: list[uuid.UUID], parallel: int) -> list[float]:
            out: list[float] = []
            queue = list(batch)

            async def worker() -> None:
                while queue:
                    u = queue.pop()
                    mark = time.perf_counter()
                    await p.serving.flags.get(flag, u)
                    out.append(time.perf_counter() - mark)

            await asyncio.gather(*(worker() for _ in range(parallel)))
            return out

        first = await run(users, concurrency)
        # Cached reads one at a time: the cost of a read itself, without queueing.
        cached = await run(users, 1)
    return first, cached


def _read_figures(settings: Settings, url: str, readers: int, concurrency: int) -> dict[str, Any]:
    """Flag-read latency with and without exposure recording, same data and process."""
    flag = f"bench-read-{uuid.uuid4().hex[:8]}"  # a fresh flag: no rules version left in Redis
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO feature_flags (flag, enabled, rollout_percent) VALUES (%s, true, 50)", (flag,))
        ids = [r[0] for r in conn.execute(
            f"SELECT {_READER.format(i='i')} FROM generate_series(1, %s) i", (2 * readers,)
        ).fetchall()]
    figures: dict[str, Any] = {}
    try:
        for label, record, users in (("without", False, ids[:readers]), ("with", True, ids[readers:])):
            cfg = settings.replace(experiments={"record_exposures": record})
            first, cached = asyncio.run(_reads(cfg, users, flag, concurrency))
            figures[f"first_read_p50_ms_{label}_exposures"] = round(percentile(first, 50) * 1000, 3)
            figures[f"first_read_p99_ms_{label}_exposures"] = round(percentile(first, 99) * 1000, 3)
            figures[f"cached_read_p50_ms_{label}_exposures"] = round(percentile(cached, 50) * 1000, 3)
            figures[f"cached_read_p99_ms_{label}_exposures"] = round(percentile(cached, 99) * 1000, 3)
    finally:
        client = redis.Redis.from_url(settings.redis.url)
        for i in range(0, len(ids), 1000):
            client.unlink(*(keys.feature_flag(flag, u) for u in ids[i : i + 1000]))
        client.unlink(keys.feature_flag_version(flag))
        client.close()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM experiment_exposures WHERE flag = %s", (flag,)).fetchone()
    assert row is not None and row[0] == readers, f"{row} exposures recorded for {readers} first reads"
    figures["flag_read_added_p50_ms_first"] = round(
        figures["first_read_p50_ms_with_exposures"] - figures["first_read_p50_ms_without_exposures"], 3
    )
    figures["flag_read_added_p50_ms_cached"] = round(
        figures["cached_read_p50_ms_with_exposures"] - figures["cached_read_p50_ms_without_exposures"], 3
    )
    return figures


def run_experiments_bench(
    settings: Settings, *, readers: int, events: int, lift: float, repeat: int = 3, read_users: int = 2000,
    concurrency: int = 16, progress: bool = True,
) -> dict[str, Any]:
    """Load, time results against the bare statement, time flag reads; return one flat figure set."""
    from rich.progress import Progress

    with scratch_database(settings.database.url, "experiments") as url, Progress(
        disable=not progress, transient=True
    ) as prog:
        bench_settings = settings.replace(database={"url": url}, experiments={"record_exposures": False})
        task = prog.add_task(f"loading {readers:,} exposures and {events:,} events", total=3)
        timings = load(url, readers=readers, events=events, lift=lift)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM personalization_events").fetchone()
        loaded_events = int(row[0]) if row else 0
        prog.update(task, advance=1, description=f"results ({repeat} runs each)")
        doc, doc_cuped, result_times = asyncio.run(_results(bench_settings, repeat, url))
        prog.update(task, advance=1, description="flag reads with and without exposures")
        reads = _read_figures(bench_settings, url, read_users, concurrency)
        prog.update(task, advance=1)
    up, upc = doc["relative_uplift"], doc_cuped["relative_uplift"]
    return {
        "bench": "experiments",
        # The machine is shared: its load while the figures were taken.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "exposures": readers,
        "events": loaded_events,
        **{k: round(v, 2) for k, v in timings.items()},
        "repeat": repeat,
        **{k: round(v, 3) for k, v in result_times.items()},
        "results_over_bare_ms": round((result_times["results_median_s"] - result_times["bare_sql_median_s"]) * 1000, 1),
        "true_lift": lift,
        "estimate": round(up["estimate"], 5) if up["estimate"] is not None else None,
        "ci95": [round(v, 5) for v in up["ci95"]] if up["ci95"] else None,
        "p_value": up["p_value"],
        "covered": bool(up["ci95"] and up["ci95"][0] <= lift <= up["ci95"][1]),
        "cuped_estimate": round(upc["estimate"], 5) if upc["estimate"] is not None else None,
        "cuped_ci95": [round(v, 5) for v in upc["ci95"]] if upc["ci95"] else None,
        "srm_p_value": doc["srm_p_value"],
        "chance_to_win": doc["chance_to_win"],
        **reads,
    }
