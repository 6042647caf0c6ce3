"""``personalization bench ingest``: library and HTTP ingest against a bare COPY of the same rows."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp
import httpx
import orjson
import psycopg
from psycopg import sql
from pydantic import SecretStr
from rich.progress import Progress

from personalization.composition import open_platform
from personalization.config import Settings
from personalization.security.keys import create_key_sync
from personalization.store.events import COPY_TYPES
from personalization_dev.bench import common
from personalization_dev.bench.auth import measure_auth_check
from personalization_dev.bench.synth import make_events, make_population


@contextlib.contextmanager
def scratch_database(settings: Settings, tag: str) -> Iterator[str]:
    """A migrated throw-away database next to the configured one, dropped afterwards."""
    with common.scratch_database(settings.database.url, tag) as url:
        yield url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(xs: list[float], p: float) -> float:
    return common.percentile(xs, p) if xs else 0.0


def _create_users(url: str, users: list[uuid.UUID]) -> None:
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy("COPY user_profile (user_id, denomination, privacy_level) FROM STDIN") as cp,
    ):
        for u in users:
            cp.write_row((u, "nondenominational", "standard"))


def _bare_copy(url: str, events: list[dict[str, Any]], table: str) -> float:
    """Seconds of a bare binary COPY of ``events`` into ``table`` (shaped like personalization_events)."""
    rows = [
        (
            uuid.UUID(e["user_id"]),
            uuid.UUID(e["session_id"]),
            e["content_id"],
            e["content_type"],
            e["signal_type"],
            Decimal(str(e["signal_weight"])),
            orjson.dumps(e["metadata"]) if e.get("metadata") else None,
            datetime.fromisoformat(e["occurred_at"]),
        )
        for e in events
    ]
    from psycopg.types.json import Jsonb

    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            sql.SQL(
                "COPY {} (user_id, session_id, content_id, content_type, signal_type, signal_weight,"
                " metadata, occurred_at) FROM STDIN (FORMAT BINARY)"
            ).format(sql.Identifier(table))
        ) as cp:
            cp.set_types(COPY_TYPES)
            for r in rows:
                cp.write_row((*r[:6], None if r[6] is None else Jsonb(r[6], dumps=lambda b: b), r[7]))
        conn.commit()
        return time.perf_counter() - t0


def _baseline_copy(url: str, events: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds of the baseline COPY, and of the same COPY into personalization_events itself.

    The baseline table is ``LIKE personalization_events INCLUDING ALL``: the same columns,
    defaults and indexes, but not the foreign key to user_profile, whose per-row check the
    real table pays.  The second figure is that bare COPY into the real table (emptied
    again afterwards, so the passes start from the same empty table): the ceiling of any
    write path into the specification's table, before validation, dedup or Redis.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_copy (LIKE personalization_events INCLUDING ALL)")
    baseline_s = _bare_copy(url, events, "bench_copy")
    real_s = _bare_copy(url, events, "personalization_events")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE personalization_events")
    return baseline_s, real_s


def _fresh_ids(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Each pass (and each run) gets its own client ids; replays inside the pass
    # stay replays because equal ids map to equal new ids.
    mapping: dict[str, str] = {}
    out = []
    for e in events:
        c = dict(e)
        old = e["client_event_id"]
        if old not in mapping:
            mapping[old] = str(uuid.uuid4())
        c["client_event_id"] = mapping[old]
        out.append(c)
    return out


async def _library_pass(settings: Settings, events: list[dict[str, Any]], batch: int, concurrency: int,
                        progress: Progress | None) -> tuple[float, int, int]:
    chunks = [events[i : i + batch] for i in range(0, len(events), batch)]
    task = progress.add_task("library ingest", total=len(events)) if progress else None
    accepted = dups = 0
    async with open_platform(settings) as p:
        queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        for c in chunks:
            queue.put_nowait(c)

        async def worker() -> None:
            nonlocal accepted, dups
            while not queue.empty():
                c = queue.get_nowait()
                r = await p.ingestor.ingest(c)
                accepted += r.accepted
                dups += len(r.duplicates)
                if progress and task is not None:
                    progress.advance(task, len(c))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return elapsed, accepted, dups


def _session(base_url: str, concurrency: int) -> aiohttp.ClientSession:
    # aiohttp, not httpx: the load generator shares the two cores with the server, PostgreSQL
    # and Redis, and httpx spent ~3.5 us of CPU per event here (1.7 ms per 500-event request)
    # against aiohttp's ~1.2 us, which the server's figure paid for.
    return aiohttp.ClientSession(
        base_url,
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def _post(client: aiohttp.ClientSession, body: bytes, headers: dict[str, str]) -> int:
    """POST one batch; returns its accepted count (an error status is fatal to the benchmark)."""
    async with client.post("/v1/events", data=body, headers=headers) as r:
        text = await r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {text[:300]!r}")
    return int(orjson.loads(text)["accepted"])


async def _warm_up(client: aiohttp.ClientSession, headers: dict[str, str]) -> None:
    """One untimed request (an empty batch: 422 without writing, after the key check)."""
    async with client.post("/v1/events", data=b'{"events": []}', headers=headers) as r:
        await r.read()


async def _http_pass(base_url: str, events: list[dict[str, Any]], batch: int, concurrency: int,
                     progress: Progress | None, auth: dict[str, str] | None = None) -> tuple[float, list[float], int]:
    bodies = [orjson.dumps({"events": events[i : i + batch]}) for i in range(0, len(events), batch)]
    sizes = [min(batch, len(events) - i) for i in range(0, len(events), batch)]
    task = progress.add_task("HTTP ingest", total=len(events)) if progress else None
    lat: list[float] = []
    accepted = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    headers = {"content-type": "application/json"} | (auth or {})
    async with _session(base_url, concurrency) as client:
        if auth:
            # The first use of a key in a server process hashes it once; keep that out of the p99.
            await _warm_up(client, headers)

        async def worker() -> None:
            nonlocal accepted
            while not queue.empty():
                i = queue.get_nowait()
                t = time.perf_counter()
                n = await _post(client, bodies[i], headers)
                lat.append((time.perf_counter() - t) * 1000)
                # Not `accepted += await ...`: that reads `accepted` before the await.
                accepted += n
                if progress and task is not None:
                    progress.advance(task, sizes[i])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, lat, accepted


async def _ab_pass(bases: list[str], events: list[dict[str, Any]], batch: int, concurrency: int,
                   auth: dict[str, str]) -> tuple[list[float], list[float], int]:
    """Requests alternate between ``bases[0]`` (no keys) and ``bases[1]`` (keys); latencies of each."""
    bodies = [orjson.dumps({"events": events[i : i + batch]}) for i in range(0, len(events), batch)]
    lat: tuple[list[float], list[float]] = ([], [])
    accepted = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    plain = {"content-type": "application/json"}
    sides = ((plain, _session(bases[0], concurrency)), (plain | auth, _session(bases[1], concurrency)))
    async with sides[0][1], sides[1][1]:
        # One untimed request each: a running server has verified its clients' keys long ago
        # (the first use of a key hashes it once per process), and both start with cold pools.
        for headers, client in sides:
            await _warm_up(client, headers)

        async def worker() -> None:
            nonlocal accepted
            while not queue.empty():
                i = queue.get_nowait()
                side = i % 2
                headers, client = sides[side]
                t = time.perf_counter()
                n = await _post(client, bodies[i], headers)
                lat[side].append((time.perf_counter() - t) * 1000)
                accepted += n

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat[0], lat[1], accepted


def _start_server(
    settings: Settings, url: str, dev_mode: bool = False, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = os.environ | {
        "PERSONALIZATION_DATABASE_URL": url,
        "PERSONALIZATION_REDIS_URL": settings.redis.url,
        "PERSONALIZATION_HTTP_PORT": str(port),
        # API keys are checked unless dev_mode (the no-auth pass of auth_overhead_p99_pct).
        "PERSONALIZATION_AUTH_DEV_MODE": "true" if dev_mode else "false",
    }
    if settings.auth.api_key_secret is not None:
        env["PERSONALIZATION_API_KEY_SECRET"] = settings.auth.api_key_secret.get_secret_value()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "personalization.api.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
         "--loop", "uvloop", "--http", "httptools", "--workers", str(workers)],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code in (200, 503):
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("API server did not start")


def run_ingest_bench(settings: Settings, *, events: int, users: int, concurrency: int, batch: int,
                     progress: bool = True, http_workers: int = 2) -> dict[str, Any]:
    """Run the three passes in one process and return the figures."""
    pop = make_population(users)
    base_events = make_events(pop, events)
    # The synthetic data set (hundreds of thousands of dicts) is scaffolding, not part
    # of the measured path: keep the cyclic GC from rescanning it on every collection.
    gc.collect()
    gc.freeze()
    with scratch_database(settings, "ingest") as url, Progress(disable=not progress, transient=True) as prog:
        _create_users(url, pop.users)
        bench_settings = settings.replace(database={"url": url})
        if bench_settings.auth.api_key_secret is None:
            # Keyed hashing as recommended for production (scrypt, used without a server
            # secret, would cost each uvicorn worker one slow hash on its first request).
            bench_settings = bench_settings.replace(auth={"api_key_secret": SecretStr(secrets.token_urlsafe(32))})
        copy_s, real_table_s = _baseline_copy(url, base_events)
        lib_events = _fresh_ids(base_events)
        lib_s, lib_acc, lib_dups = asyncio.run(
            _library_pass(bench_settings, lib_events, batch, concurrency, prog if progress else None)
        )
        with psycopg.connect(url) as conn:
            key = create_key_sync(conn, bench_settings, "bench-ingest", ["ingest"], "bench")
        auth_check = measure_auth_check(bench_settings, key)
        # auth_overhead_p99_pct: a server without keys and one with keys, running side by side and
        # fed alternate requests, so both see the same table size and the same machine load.
        servers = [_start_server(bench_settings, url, dev_mode=True), _start_server(bench_settings, url)]
        try:
            noauth_lat, ab_auth_lat, noauth_acc = asyncio.run(
                # Small requests, many of them: the p99 of two identical servers fed this way
                # differed by up to 27% over 1000 requests each, by at most 5% over 4000.
                _ab_pass([b for _, b in servers], _fresh_ids(base_events), max(1, batch // 20),
                         concurrency, {"Authorization": f"Bearer {key}"})
            )
        finally:
            for proc, _ in servers:
                proc.terminate()
                proc.wait(10)
        proc, base = _start_server(bench_settings, url, workers=http_workers)
        try:
            http_events = _fresh_ids(base_events)
            http_s, lat, http_acc = asyncio.run(
                _http_pass(base, http_events, batch, concurrency, prog if progress else None,
                           {"Authorization": f"Bearer {key}"})
            )
        finally:
            proc.terminate()
            proc.wait(10)
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM personalization_events").fetchone()
        _cleanup_redis(settings, pop.users, pop.sessions)
    copy_rate = events / copy_s
    lib_rate = events / lib_s
    http_rate = events / http_s
    return {
        "events": events,
        "users": users,
        "batch": batch,
        "concurrency": concurrency,
        "http_workers": http_workers,
        "library_events_per_s": round(lib_rate),
        "http_events_per_s": round(http_rate),
        "baseline_copy_rows_per_s": round(copy_rate),
        # The same bare COPY into personalization_events (with its foreign key): the ceiling.
        "real_table_copy_rows_per_s": round(events / real_table_s),
        "real_table_copy_ratio": round(copy_s / real_table_s, 3),
        "library_ratio": round(lib_rate / copy_rate, 3),
        "http_ratio": round(http_rate / copy_rate, 3),
        "http_p50_ms": round(statistics.median(lat), 2),
        "http_p99_ms": round(_pct(lat, 99), 2),
        "ab_noauth_p99_ms": round(_pct(noauth_lat, 99), 2),
        "ab_auth_p99_ms": round(_pct(ab_auth_lat, 99), 2),
        "auth_overhead_p99_pct": round((_pct(ab_auth_lat, 99) / _pct(noauth_lat, 99) - 1) * 100, 2),
        **auth_check,
        "library_duplicates": lib_dups,
        "stored_rows": int(stored[0]) if stored else 0,
        "accepted": lib_acc + http_acc + noauth_acc,
    }


def _cleanup_redis(settings: Settings, users: list[uuid.UUID], sessions: list[list[uuid.UUID]]) -> None:
    import redis

    from personalization.cache import keys

    r = redis.Redis.from_url(settings.redis.url)
    with r.pipeline(transaction=False) as pipe:
        for u, ss in zip(users, sessions, strict=True):
            pipe.delete(keys.user_signals(u))
            for s in ss:
                pipe.delete(keys.session_recent_content(s))
        pipe.execute()
