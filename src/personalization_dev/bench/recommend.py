"""``personalization bench recommend`` and ``bench ann``: recommendation speed (issue 16).

``recommend``: a scratch database with a catalogue of ``items`` passages (books of 50
chapters, topic-clustered 384-d embeddings) and ``readers`` readers who each worked
through part of a book and browsed their topics; the nightly training; then per-request
latency of ``GET /v1/users/{id}/recommendations`` in process (HNSW index, and exact
search in the same run as the baseline), with Redis down (PostgreSQL fallback), and over
HTTP against a real server at a fixed offered rate.

``ann``: usearch, faiss-cpu (HNSW) and hnswlib on the same vectors: build time, memory,
recall@10 against exact search and query latency (the measurement behind the choice).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from personalization.composition import open_platform
from personalization.config import Settings
from personalization.core import embedding as emb
from personalization.recommend.ann import IndexParams, VectorIndex, exact_top
from personalization.recommend.nightly import train
from personalization_dev.bench.common import percentile, scratch_database

F32 = npt.NDArray[np.float32]
CHAPTERS = 50
WEIGHT = Decimal("0.8")


def clustered_vectors(n: int, dim: int, seed: int = 3, topics: int = 64) -> F32:
    """Unit vectors of topic mixtures plus noise: the shape of real content embeddings, not uniform noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((topics, dim)).astype(np.float32)
    mix = rng.dirichlet(np.full(topics, 0.1), n).astype(np.float32)
    out = mix @ basis
    out += 0.15 * rng.standard_normal((n, dim)).astype(np.float32)
    return emb.normalize_rows(out)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- ANN comparison ----------------------------------------------------------------------

def run_ann_bench(n: int = 100_000, dim: int = 384, queries: int = 500, k: int = 10,
                  threads: int = 0) -> dict[str, Any]:
    """Every installed library at the project's parameters (M=16, ef_construction=128, ef=128)."""
    vectors = clustered_vectors(n, dim)
    rng = np.random.default_rng(5)
    q = emb.normalize_rows(vectors[rng.integers(0, n, (queries, 3))].sum(axis=1))
    lat = []
    exact = []
    for v in q:
        t = time.perf_counter()
        exact.append(set(exact_top(vectors, v, k)[0].tolist()))
        lat.append((time.perf_counter() - t) * 1000)
    out: dict[str, Any] = {"bench": "ann", "n": n, "dim": dim, "queries": queries,
                           "exact_p50_ms": round(statistics.median(lat), 3)}
    threads = threads or (os.cpu_count() or 1)
    for name, build in (("usearch", _usearch), ("faiss", _faiss), ("hnswlib", _hnswlib)):
        try:
            t0 = time.perf_counter()
            search, memory = build(vectors, threads)
            build_s = time.perf_counter() - t0
        except ImportError:
            out[name] = None  # not installed (pip install -e '.[annbench]')
            continue
        lat, hits = [], 0
        for v, truth in zip(q, exact, strict=True):
            t = time.perf_counter()
            ids = search(v, k)
            lat.append((time.perf_counter() - t) * 1000)
            hits += len(truth & set(int(i) for i in ids))
        out[name] = {"build_s": round(build_s, 2), "memory_mb": round(memory / 2**20, 1),
                     "recall_at_10": round(hits / (k * queries), 4),
                     "query_p50_ms": round(statistics.median(lat), 3), "query_p99_ms": round(percentile(lat, 99), 3)}
    return out


def _usearch(vectors: F32, threads: int) -> tuple[Callable[[F32, int], Any], int]:
    index = VectorIndex(vectors, params=IndexParams(min_items=0, threads=threads))
    if index.kind != "hnsw":
        raise ImportError("usearch")
    return (lambda v, k: index.search(v, k)[0]), index.memory_bytes


def _faiss(vectors: F32, threads: int) -> tuple[Callable[[F32, int], Any], int]:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(vectors.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.add(vectors)
    index.hnsw.efSearch = 128
    faiss.omp_set_num_threads(1)
    # HNSW links (2M neighbours per node at level 0, int32) plus the float32 vectors.
    memory = vectors.nbytes + vectors.shape[0] * 2 * 16 * 4
    return (lambda v, k: index.search(v[None, :], k)[1][0]), memory


def _hnswlib(vectors: F32, threads: int) -> tuple[Callable[[F32, int], Any], int]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=vectors.shape[0], M=16, ef_construction=128)
    index.add_items(vectors, np.arange(vectors.shape[0]), num_threads=threads)
    index.set_ef(128)
    index.set_num_threads(1)
    memory = vectors.nbytes + vectors.shape[0] * (2 * 16 * 4 + 8)
    return (lambda v, k: index.knn_query(v, k)[0][0]), memory


# ---- recommend ---------------------------------------------------------------------------

def _populate(url: str, items: int, readers: int, dim: int, events_per_reader: int, seed: int) -> list[uuid.UUID]:
    rng = np.random.default_rng(seed)
    vectors = clustered_vectors(items, dim, seed)
    books = (items + CHAPTERS - 1) // CHAPTERS
    ids = [f"KJV:S{i // CHAPTERS:05d}.{i % CHAPTERS + 1}" for i in range(items)]
    users = [uuid.UUID(int=int(x), version=4) for x in rng.integers(1, 2**62, readers)]
    now = datetime.now(UTC)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy("COPY content_items (content_id, content_type, title, passage_id, translation, series, position,"
                      " tags) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["text", "text", "text", "text", "text", "text", "int4", "text[]"])
            for i, cid in enumerate(ids):
                cp.write_row((cid, "chapter", f"Book {i // CHAPTERS} chapter {i % CHAPTERS + 1}", cid[4:], "KJV",
                              f"S{i // CHAPTERS:05d}", i % CHAPTERS + 1, [f"topic:{int(np.argmax(vectors[i, :8]))}"]))
        with cur.copy("COPY content_embeddings (content_id, model, dim, embedding) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["text", "text", "int4", "bytea"])
            for i, cid in enumerate(ids):
                cp.write_row((cid, "bench", dim, vectors[i].tobytes()))
        with cur.copy("COPY user_profile (user_id, preferred_translation) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["uuid", "text"])
            for u in users:
                cp.write_row((u, "KJV"))
        # Each reader: a run of consecutive chapters of one book, then items near those by embedding.
        with cur.copy("COPY personalization_events (user_id, session_id, content_id, content_type, signal_type,"
                      " signal_weight, occurred_at) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["uuid", "uuid", "text", "text", "text", "numeric", "timestamptz"])
            run = events_per_reader // 2
            starts = rng.integers(0, books, readers) * CHAPTERS + rng.integers(0, CHAPTERS - run, readers)
            randoms = rng.integers(0, items, (readers, events_per_reader - run))
            days = rng.uniform(0, 27, (readers, events_per_reader))
            for r, u in enumerate(users):
                session = uuid.UUID(int=int(rng.integers(1, 2**62)), version=4)
                picks = list(range(int(starts[r]), int(starts[r]) + run)) + randoms[r].tolist()
                for j, p in enumerate(picks):
                    cp.write_row((u, session, ids[p], "chapter", "read" if j % 3 else "view", WEIGHT,
                                  now - timedelta(days=float(days[r, j]))))
        conn.commit()
        conn.execute("ANALYZE")
    return users


async def _latency(call: Callable[[int], Any], n: int) -> dict[str, float]:
    for i in range(min(100, n)):
        await call(i)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await call(i)
        lat.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(statistics.median(lat), 3), "p99_ms": round(percentile(lat, 99), 3)}


async def _in_process(settings: Settings, users: list[uuid.UUID], requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with open_platform(settings) as p:
        t0 = time.perf_counter()
        report = await train(p.db, p.recommender.settings, dim=settings.embedding.dim, decay=p.recommender.decay)
        out["nightly_train_s"] = round(time.perf_counter() - t0, 2)
        out["nightly_seconds"] = report.as_dict()["seconds"]
        rec = p.recommender
        t0 = time.perf_counter()
        await rec.models()
        out["first_load_s"] = round(time.perf_counter() - t0, 2)
        await rec.loader.wait_idle()
        models = rec.loader.models
        assert models is not None and models.embedding_index is not None
        index = models.embedding_index
        out["index_kind"] = index.kind
        out["index_build_s"] = round(index.build_s, 2)
        out["index_memory_mb"] = round(index.memory_bytes / 2**20, 1)
        out["vectors_memory_mb"] = round(models.catalog.vectors.nbytes / 2**20, 1)
        cf_bytes = models.cf.index.memory_bytes + models.cf.factors.nbytes if models.cf else 0
        out["cf_memory_mb"] = round(cf_bytes / 2**20, 1)

        async def call(i: int) -> None:
            await rec.for_user(users[(i * 7919) % len(users)], 10)

        out["in_process"] = await _latency(call, requests)
        # Baseline in the same run: the same requests with exact search in both indexes.
        exact = IndexParams(min_items=models.catalog.size + 1)
        exact_models = dataclasses.replace(
            models, embedding_index=VectorIndex(models.catalog.vectors, models.catalog.has_vector, exact),
            cf=dataclasses.replace(models.cf, index=VectorIndex(models.cf.factors, models.cf.valid, exact))
            if models.cf else None)
        rec.loader.models = exact_models
        out["in_process_exact"] = await _latency(call, max(200, requests // 5))
        rec.loader.models = models
        out["speedup_p50_over_exact"] = round(out["in_process_exact"]["p50_ms"] / out["in_process"]["p50_ms"], 2)
        out["process_max_rss_mb"] = round(_rss_mb(), 1)
    # Redis down: nothing listens on port 1, every read falls back to PostgreSQL.
    down = settings.replace(redis={"url": "redis://127.0.0.1:1/0"})
    async with open_platform(down) as p:
        # The same models (no second load and index build in this process).
        p.recommender.loader.models, p.recommender.loader.versions = models, rec.loader.versions

        async def call_down(i: int) -> None:
            await p.recommender.for_user(users[(i * 7919) % len(users)], 10)

        out["in_process_redis_down"] = await _latency(call_down, max(200, requests // 5))
    return out


async def _http(settings: Settings, users: list[uuid.UUID], rate: float, duration_s: float,
                concurrency: int, index_kind: str) -> dict[str, Any]:
    import aiohttp

    from personalization_dev.bench.ingest import _start_server
    from personalization_dev.bench.serve import _bench_key

    key = await _bench_key(settings)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    proc, base = _start_server(settings, settings.database.url)
    try:
        async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=concurrency),
                                         headers=headers) as session:
            async def get(i: int) -> int:
                async with session.get(f"/v1/users/{users[(i * 104729) % len(users)]}/recommendations",
                                       params={"limit": "10"}) as r:
                    await r.read()
                    return r.status

            if (status := await get(0)) != 200:
                raise RuntimeError(f"HTTP {status} from the recommendations route")
            deadline = time.monotonic() + 300
            while True:
                async with session.get("/healthz/recommendations") as r:
                    if (await r.json()).get("index") == index_kind:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the server never built its index")
                await asyncio.sleep(0.5)
            for i in range(300):
                await get(i)
            # Open loop at a fixed offered rate: each request starts on its schedule.
            lat: list[float] = []
            errors = 0
            n = int(rate * duration_s)
            t0 = time.perf_counter()

            async def one(i: int) -> None:
                nonlocal errors
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = time.perf_counter()
                errors += await get(i) != 200
                lat.append((time.perf_counter() - t) * 1000)

            await asyncio.gather(*(one(i) for i in range(n)))
            elapsed = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(10)
    if errors:
        raise RuntimeError(f"{errors} HTTP errors during the run")
    return {"offered_rps": rate, "achieved_rps": round(len(lat) / elapsed, 1),
            "p50_ms": round(statistics.median(lat), 3), "p99_ms": round(percentile(lat, 99), 3)}


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_recommend_bench(settings: Settings, *, items: int = 100_000, readers: int = 100_000, dim: int = 384,
                        events_per_reader: int = 20, requests: int = 3000, rate: float = 300.0,
                        duration_s: float = 10.0, seed: int = 16,
                        on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole benchmark in a scratch database; one dict of figures."""
    step = on_step or (lambda _: None)
    with _env(PERSONALIZATION_EMBEDDING_DIM=str(dim), PERSONALIZATION_RATE_LIMIT_PER_S="1000000",
              PERSONALIZATION_RATE_LIMIT_BURST="1000000"), \
            scratch_database(settings.database.url, "recommend") as url:
        step("populating the catalogue, readers and events")
        t0 = time.perf_counter()
        users = _populate(url, items, readers, dim, events_per_reader, seed)
        out: dict[str, Any] = {"bench": "recommend", "items": items, "readers": readers, "dim": dim,
                               "events": readers * events_per_reader, "populate_s": round(time.perf_counter() - t0, 1)}
        # The server subprocess reads the dimension and rate limits from the environment above.
        bench_settings = settings.replace(database={"url": url}, embedding={"dim": dim},
                                          auth={"rate_limit_per_s": 1e6, "rate_limit_burst": 1_000_000})
        step("training and measuring in process")
        out.update(asyncio.run(_in_process(bench_settings, users, requests)))
        step("measuring over HTTP")
        out["http"] = asyncio.run(_http(bench_settings, users, rate, duration_s, concurrency=64,
                                     index_kind=out["index_kind"]))
    out["goals"] = {"in_process_p99_le_10ms": out["in_process"]["p99_ms"] <= 10,
                    "http_p99_le_20ms_at_300rps": out["http"]["p99_ms"] <= 20 and out["http"]["achieved_rps"] >= 300,
                    "index_build_le_30s": out["index_build_s"] <= 30}
    return out
