"""``personalization demo``: the whole system on real content and a simulated population.

Services: the configured ``PERSONALIZATION_*`` URLs or, when none is set, an embedded
local stack started for the run.  Processes: the HTTP API (uvicorn), the Debezium
relay (``cdc run``) and the online learner (``learner run``) run as child processes
that die with this one; the nightly job runs at the end.  The report compares the
reranked recommendations with a popularity ranking against the simulated readers'
current topic affinities.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from personalization.kafka.topics import ensure_topics
from personalization_dev.childproc import CliChild
from personalization_dev.demo.bible import Chapter, embed_chapters, load_chapters
from personalization_dev.demo.simulate import Reader, World, make_world, relevant, simulate_events


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass
class DemoOptions:
    users: int = 1000
    days: int = 28
    seed: int = 42
    embedding_dim: int = 128
    batch: int = 500
    concurrency: int = 8
    candidates: int = 300
    top_k: int = 10
    eval_users: int = 300
    live_rate: int = 1000
    rerank_alpha: float = 0.85
    work_dir: Path = field(default_factory=lambda: Path(".personalization") / "demo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(name: str, module: str, args: list[str], env: dict[str, str], log_dir: Path) -> CliChild:
    """Start a child process of the demo; its output goes to ``log_dir/<name>.log``."""
    child = CliChild(module, args, env, name=name, log_path=log_dir / f"{name}.log")
    child.spawn()
    return child


def _check(child: CliChild) -> None:
    code = child.wait_or_none()
    if code is not None:
        raise DemoError(f"{child.name} exited with code {code}:\n{child.tail()}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "personalization.cli", *args]


def _run_cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    r = subprocess.run(_cli(*args), env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise DemoError(f"personalization {' '.join(args)} failed: {(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout


class FreshnessProbe:
    """An independent consumer of the CDC topic: commit-to-consume latency of every insert."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.latencies_ms: list[tuple[float, float]] = []  # (commit ts, latency)
        self.inserts = 0
        self._stop = threading.Event()
        self.assigned = threading.Event()
        # The consumer is not thread-safe: it is created here and then used only by
        # the probe's own thread (and closed there).
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-probe-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        })
        self._thread = threading.Thread(target=self._loop, name="freshness-probe", daemon=True)

    def start(self, timeout: float = 60) -> None:
        """Subscribe and wait until the group has assigned partitions, so no latency is a join delay."""

        def on_assign(consumer: Any, partitions: Any) -> None:
            self.assigned.set()

        self._consumer.subscribe([self.topic], on_assign=on_assign)
        self._thread.start()
        if not self.assigned.wait(timeout):
            raise DemoError(f"the freshness probe got no partitions of {self.topic} within {timeout:.0f} s")

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(500, 0.2):
                    value = msg.value()
                    if msg.error() or value is None:
                        continue
                    now_ms = time.time() * 1000
                    try:
                        env = json.loads(value)
                    except ValueError:
                        continue
                    if env.get("op") != "c":
                        continue
                    self.inserts += 1
                    ts = (env.get("source") or {}).get("ts_ms")
                    if isinstance(ts, int | float):
                        self.latencies_ms.append((ts, now_ms - ts))
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def percentile(self, p: float, since_ms: float = 0.0) -> float:
        """Latency percentile of the inserts committed at or after ``since_ms`` (epoch ms)."""
        xs = [lat for ts, lat in self.latencies_ms if ts >= since_ms]
        if not xs:
            return float("nan")
        return float(np.percentile(xs, p))


async def _send_all(client: httpx.AsyncClient, method: str, jobs: list[tuple[str, Any]], concurrency: int,
                    advance: Callable[[int], None]) -> list[httpx.Response]:
    """Send every job with ``concurrency`` workers; ``advance(i)`` after job ``i`` succeeded."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(jobs)):
        queue.put_nowait(i)
    out: list[httpx.Response | None] = [None] * len(jobs)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            path, body = jobs[i]
            for attempt in range(5):
                try:
                    r = await client.request(method, path, json=body)
                except httpx.TransportError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("retry-after", "0.5")))
                    continue
                break
            if r.status_code >= 400:
                raise DemoError(f"{method} {path} -> HTTP {r.status_code}: {r.text[:300]}")
            out[i] = r
            advance(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in out if r is not None]


def _write_content_file(path: Path, chapters: list[Chapter], vectors: list[list[float]]) -> None:
    with path.open("w") as fh:
        for c, v in zip(chapters, vectors, strict=True):
            words = c.text.split()
            fh.write(json.dumps({
                "content_id": c.content_id, "content_type": "passage", "title": c.title,
                "body": " ".join(words[:60]), "embedding": v,
            }) + "\n")


def run_demo(opts: DemoOptions, console: Console, quiet: bool = False) -> dict[str, Any]:
    """Run the whole demo and return the report's figures (raises DemoError on any failure)."""
    from personalization_dev.stack import configured_or_local

    t_start = time.perf_counter()
    progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=quiet, transient=False)
    with progress:
        stack_task = progress.add_task("services", total=None)

        def on_step(desc: str, done: int, total: int) -> None:
            progress.update(stack_task, description=f"services: {desc}"[:34], completed=done, total=total)

        with configured_or_local(progress=on_step) as urls:
            progress.update(stack_task, description="services ready", completed=1, total=1)
            return _run_with_services(opts, urls.as_env(), progress, console, t_start, quiet)


def _run_with_services(opts: DemoOptions, service_env: dict[str, str], progress: Progress, console: Console,
                       t_start: float, quiet: bool) -> dict[str, Any]:
    work = opts.work_dir
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **service_env, "PERSONALIZATION_EMBEDDING_DIM": str(opts.embedding_dim),
           # The candidates' prior is popularity in [0, 1]; cosines of TF-IDF/SVD vectors are
           # smaller, so the demo weighs the similarity more than the default blend does.
           "PERSONALIZATION_RERANK_ALPHA": str(opts.rerank_alpha),
           "PYTHONUNBUFFERED": "1"}
    database_url = service_env["PERSONALIZATION_DATABASE_URL"]
    bootstrap = service_env["PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS"]
    prefix = env.get("PERSONALIZATION_KAFKA_TOPIC_PREFIX", "personalization")
    topic = f"{prefix}.public.personalization_events"
    children: list[CliChild] = []
    figures: dict[str, Any] = {"users": opts.users, "days": opts.days}
    demo_key_id: str | None = None
    try:
        # 1. Schema and an API key for the demo's own client.
        _run_cli(env, "db", "upgrade")
        created = json.loads(_run_cli(env, "keys", "create", "--name", f"demo-{uuid.uuid4().hex[:6]}", "--scopes",
                                      "ingest,profile:write,read,admin", "--json"))
        key = created["key"]
        # The key can do everything (admin): it is revoked when the demo ends, however it ends.
        demo_key_id = created["key_id"]

        # 2. Content: KJV chapters with TF-IDF + SVD embeddings, imported by the CLI.
        t = progress.add_task("content: KJV chapters", total=3)
        chapters = load_chapters()
        progress.advance(t)
        vectors = embed_chapters(chapters, opts.embedding_dim, seed=opts.seed)
        progress.advance(t)
        content_file = work / "kjv_chapters.jsonl"
        _write_content_file(content_file, chapters, vectors)
        _run_cli(env, "content", "import", str(content_file))
        progress.advance(t)

        # 3. The pipeline: CDC relay, learner, API server.
        t = progress.add_task("pipeline: relay, learner, API", total=3)
        logs = work / "logs"
        relay = _child("cdc-relay", "personalization.cli", ["cdc", "run", "--metrics-port", "0"], env, logs)
        children.append(relay)
        relay_started = time.perf_counter()
        learner_group = f"demo-learner-{uuid.uuid4().hex[:6]}"
        learner_args = ["learner", "run", "--group-id", learner_group, "--metrics-port", "0"]
        learner = _child("learner", "personalization.cli", learner_args, env, logs)
        children.append(learner)
        port = _free_port()
        api = _child("api", "uvicorn", ["personalization.api.app:create_app", "--factory", "--host", "127.0.0.1",
                                        "--port", str(port), "--log-level", "warning", "--no-access-log"], env, logs)
        children.append(api)
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/healthz", api, 60)
        progress.advance(t)
        relay.wait_for_output("relay started in", 120, error=DemoError)
        figures["cdc_startup_s"] = round(time.perf_counter() - relay_started, 2)
        progress.advance(t)
        _check(learner)
        progress.advance(t)
        ensure_topics(bootstrap, [topic])
        probe = FreshnessProbe(bootstrap, topic)
        probe.start()

        # 4. Population and behaviour.
        # Fresh reader ids per run (behaviour stays seeded): a second run on the same database
        # makes new readers instead of piling onto (or colliding with) the last run's ones.
        world = make_world(chapters, opts.users, seed=opts.seed, fresh_ids=True)
        events = simulate_events(world, opts.days, seed=opts.seed + 1)
        headers = {"authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
        # The spec's rollout flag of personalization itself: 90 % of readers get the
        # personalized order, the rest the popularity order (the rollout is the experiment).
        flag = httpx.put(f"{base}/v1/flags/personalization", headers=headers, timeout=30,
                         json={"enabled": True, "rollout_percent": 90, "description": "demo rollout"})
        if flag.status_code >= 400:
            raise DemoError(f"setting the personalization flag failed: HTTP {flag.status_code} {flag.text[:200]}")
        last_session = {e["user_id"]: e["session_id"] for e in events}
        ingest = asyncio.run(_populate(base, headers, limits, world, events, opts, progress, probe))
        figures.update(ingest)

        # 5. Let the stream drain into the learner.
        t = progress.add_task("learner: catching up", total=ingest["events_stored"])
        _wait_learner(database_url, learner_group, topic, probe, ingest["events_stored"], progress, t,
                      [relay, learner])
        probe.stop()
        figures["cdc_p50_ms"] = round(probe.percentile(50, since_ms=ingest["live_from_ms"]), 1)
        figures["cdc_p99_ms"] = round(probe.percentile(99, since_ms=ingest["live_from_ms"]), 1)
        figures["cdc_backfill_p99_ms"] = round(probe.percentile(99), 1)
        del figures["live_from_ms"]

        # 6. Nightly job.
        t = progress.add_task("nightly job", total=1)
        t0 = time.perf_counter()
        _run_cli(env, "jobs", "nightly")
        figures["nightly_s"] = round(time.perf_counter() - t0, 2)
        progress.advance(t)

        # 7. Logins, recommendations and the evaluation.
        evaluation = asyncio.run(
            _evaluate(base, headers, limits, world, chapters, database_url, last_session, opts, progress)
        )
        figures.update(evaluation)
    finally:
        for c in reversed(children):
            c.close()
        if demo_key_id is not None:
            _run_cli(env, "keys", "revoke", demo_key_id)
            figures["admin_key_revoked"] = demo_key_id
    figures["total_s"] = round(time.perf_counter() - t_start, 1)
    return figures


def _wait_http(url: str, child: CliChild, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check(child)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise DemoError(f"{child.name} did not answer {url} within {timeout:.0f} s:\n{child.tail()}")


async def _populate(base: str, headers: dict[str, str], limits: httpx.Limits, world: World,
                    events: list[dict[str, Any]], opts: DemoOptions, progress: Progress,
                    probe: FreshnessProbe) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=120) as client:
        n_jobs = len(world.readers) + sum(len(r.traits) for r in world.readers)
        t = progress.add_task(f"users: {len(world.readers)} profiles + traits", total=n_jobs)
        await _send_all(client, "PUT", [(f"/v1/users/{r.user_id}", r.profile) for r in world.readers],
                        opts.concurrency, lambda i: progress.advance(t))
        trait_jobs = [(f"/v1/users/{r.user_id}/traits", tr) for r in world.readers for tr in r.traits]
        await _send_all(client, "POST", trait_jobs, opts.concurrency, lambda i: progress.advance(t))
        # History is backfilled as fast as the API takes it; the last day is sent "live",
        # paced like real traffic, and the CDC freshness is measured on that part.
        cut = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        history = [e for e in events if e["occurred_at"] < cut]
        live = [e for e in events if e["occurred_at"] >= cut]
        t = progress.add_task("behaviour: HTTP ingest (history)", total=len(history))
        batches = [("/v1/events", {"events": history[i : i + opts.batch]}) for i in range(0, len(history), opts.batch)]
        t0 = time.perf_counter()
        responses = await _send_all(client, "POST", batches, opts.concurrency,
                                    lambda i: progress.advance(t, len(batches[i][1]["events"])))
        elapsed = time.perf_counter() - t0
        # The relay drains the backfill first, so the live phase measures steady-state
        # freshness, not the backlog of history.
        history_stored = sum(r.json()["accepted"] for r in responses)
        t = progress.add_task("CDC: draining the backfill", total=history_stored)
        deadline = time.monotonic() + 300
        while probe.inserts < history_stored:
            if time.monotonic() > deadline:
                raise DemoError(f"the CDC relay delivered {probe.inserts} of {history_stored} inserts in 300 s")
            progress.update(t, completed=probe.inserts)
            await asyncio.sleep(0.2)
        progress.update(t, completed=history_stored)
        t = progress.add_task(f"behaviour: live at {opts.live_rate}/s", total=len(live))
        live_from_ms = time.time() * 1000
        responses += await _send_paced(client, live, opts.live_rate, lambda n: progress.advance(t, n))
    stored = sum(r.json()["accepted"] for r in responses)
    suppressed = sum(len(r.json()["suppressed"]) for r in responses)
    rejected = sum(len(r.json()["rejected"]) for r in responses)
    return {
        "events": len(events),
        "events_stored": stored,
        "events_suppressed": suppressed,
        "events_rejected": rejected,
        "ingest_events_per_s": round(len(history) / elapsed) if history else None,
        "live_events": len(live),
        "live_from_ms": live_from_ms,
    }


async def _send_paced(client: httpx.AsyncClient, events: list[dict[str, Any]], rate: int,
                      advance: Callable[[int], None]) -> list[httpx.Response]:
    """Send ``events`` at about ``rate`` events/s in small batches (20 per second)."""
    per_tick = max(1, rate // 20)
    out: list[httpx.Response] = []
    start = time.perf_counter()
    pending: set[asyncio.Task[httpx.Response]] = set()
    for n, i in enumerate(range(0, len(events), per_tick)):
        delay = start + n / 20 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = events[i : i + per_tick]
        task = asyncio.create_task(client.post("/v1/events", json={"events": chunk}))
        size = len(chunk)

        def done(_t: asyncio.Task[httpx.Response], k: int = size) -> None:
            advance(k)

        task.add_done_callback(done)
        pending.add(task)
    for r in await asyncio.gather(*pending):
        if r.status_code >= 400:
            raise DemoError(f"POST /v1/events -> HTTP {r.status_code}: {r.text[:300]}")
        out.append(r)
    return out


def _wait_learner(database_url: str, group: str, topic: str, probe: FreshnessProbe, expected: int, progress: Progress,
                  task: Any, children: list[CliChild], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            for c in children:
                _check(c)
            row = conn.execute(
                "SELECT coalesce(sum(next_offset), 0) FROM learner_offsets WHERE group_id = %s AND topic = %s",
                (group, topic),
            ).fetchone()
            consumed = int(row[0]) if row else 0
            progress.update(task, completed=min(probe.inserts, expected))
            # The learner has applied everything once its committed offsets reach
            # the number of messages the probe saw on the topic.
            if probe.inserts >= expected and consumed >= probe.inserts:
                return
            time.sleep(0.5)
    raise DemoError(
        f"the learner did not catch up within {timeout:.0f} s (topic inserts seen {probe.inserts} of {expected})"
    )


async def _evaluate(base: str, headers: dict[str, str], limits: httpx.Limits, world: World,
                    chapters: list[Chapter], database_url: str, last_session: dict[str, str],
                    opts: DemoOptions, progress: Progress) -> dict[str, Any]:
    titles = {c.content_id: c for c in chapters}
    with psycopg.connect(database_url) as conn:
        popular = conn.execute(
            "SELECT content_id, count(*) AS n FROM personalization_events GROUP BY content_id"
            " ORDER BY n DESC, content_id LIMIT %s", (opts.candidates,)
        ).fetchall()
        personalizable = {r[0] for r in conn.execute(
            "SELECT user_id FROM user_embeddings WHERE embedding IS NOT NULL").fetchall()}
        scores = conn.execute(
            "SELECT user_id, content_type, signal_type, score, event_count FROM user_signal_scores"
        ).fetchall()
    top_n = popular[0][1] if popular else 1
    candidates = [{"content_id": cid, "score": round(n / top_n, 6)} for cid, n in popular]
    eligible = [r for r in world.readers if r.user_id in personalizable and r.profile["privacy_level"] == "standard"]
    sample = eligible[: opts.eval_users]
    t = progress.add_task("recommendations: login + rerank", total=len(sample))
    hits_p: list[float] = []
    hits_pop: list[float] = []
    variants: dict[str, int] = {}
    samples: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:
        for reader in sample:
            login = await client.post(f"/v1/users/{reader.user_id}/login")
            if login.status_code != 200:
                raise DemoError(f"login of {reader.user_id} -> HTTP {login.status_code}: {login.text[:300]}")
            # The reader's latest session: what it showed is excluded from the recommendations.
            session = last_session.get(str(reader.user_id), str(uuid.uuid4()))
            r = await client.post(f"/v1/users/{reader.user_id}/rerank",
                                  json={"session_id": session, "candidates": candidates})
            if r.status_code != 200:
                raise DemoError(f"rerank for {reader.user_id} -> HTTP {r.status_code}: {r.text[:300]}")
            body = r.json()
            variant = str(body.get("variant"))
            variants[variant] = variants.get(variant, 0) + 1
            ranked = _ranked_ids(body)[: opts.top_k]
            excluded = set(body.get("excluded") or [])
            truth = relevant(world, reader)
            # Popularity, with the same session exclusion, is the baseline for every reader.
            pop_top = [c["content_id"] for c in candidates if c["content_id"] not in excluded][: opts.top_k]
            hits_pop.append(len([c for c in pop_top if c in truth]) / opts.top_k)
            if variant == "personalized":
                hits_p.append(len([c for c in ranked if c in truth]) / opts.top_k)
                if len(samples) < 3:
                    samples.append(_sample_report(reader, world, ranked, titles, scores, body))
            progress.advance(t)
    p = statistics.fmean(hits_p) if hits_p else 0.0
    q = statistics.fmean(hits_pop) if hits_pop else 0.0
    return {
        "evaluated_users": len(sample),
        "variants": variants,
        "personalized_hit_rate": round(p, 4),
        "popularity_hit_rate": round(q, 4),
        "lift": round(p / q, 2) if q else None,
        "samples": samples,
    }


def _ranked_ids(body: dict[str, Any]) -> list[str]:
    items = body.get("items") or body.get("ranked") or body.get("candidates") or []
    return [it["content_id"] if isinstance(it, dict) else str(it) for it in items]


def _sample_report(reader: Reader, world: World, ranked: list[str],
                         titles: dict[str, Chapter], scores: list[tuple[Any, ...]],
                         rerank_body: dict[str, Any]) -> dict[str, Any]:
    mine = sorted((s for s in scores if s[0] == reader.user_id), key=lambda s: -abs(float(s[3])))[:3]
    order = np.argsort(-reader.affinity)[:2]
    return {
        "user_id": str(reader.user_id),
        "favoured_topics": [world.topic_names[int(k)] for k in order],
        "variant": rerank_body.get("variant"),
        "session_recent_excluded": list(rerank_body.get("excluded") or [])[:5],
        "top_signals": [{"content_type": s[1], "signal_type": s[2], "score": round(float(s[3]), 3),
                         "events": int(s[4])} for s in mine],
        "recommendations": [
            {"content_id": cid, "topic": titles[cid].topic if cid in titles else None,
             "opening": " ".join(titles[cid].text.split()[:8]) + "..." if cid in titles else ""}
            for cid in ranked[:5]
        ],
    }
