"""``personalization demo``: the whole system on real content and a simulated population.

Services: the configured ``PERSONALIZATION_*`` URLs or, when none is set, an embedded
local stack started for the run.  Processes: the HTTP API (uvicorn), the Debezium
relay (``cdc run``) and the online learner (``learner run``) run as child processes
that die with this one; the nightly job runs at the end.  The report compares the
reranked recommendations (and the platform's own, where it has a recommender) with a
popularity ranking against the simulated readers' current topic affinities, and reads
the ``personalization`` rollout out as an experiment (:mod:`.experiment`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
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

from personalization.kafka import names
from personalization.kafka.topics import ensure_topics
from personalization_dev.childproc import CliChild
from personalization_dev.demo import experiment, recommender
from personalization_dev.demo.bible import Chapter, Passage, embed_chapters, items_of, load_passages
from personalization_dev.demo.errors import DemoError
from personalization_dev.demo.evaluate import evaluate
from personalization_dev.demo.freshness import FreshnessProbe
from personalization_dev.demo.simulate import World, make_world, simulate_events


@dataclass
class DemoOptions:
    users: int = 1000
    days: int = 28
    seed: int = 42
    # None: the deployment's configured dimension (PERSONALIZATION_EMBEDDING_DIM, 384 by
    # default), so what the demo stores is what the API and the learner of the same
    # services expect.
    embedding_dim: int | None = None
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


def _write_content_file(path: Path, chapters: list[Chapter], vectors: np.ndarray) -> None:
    """The catalogue as ``content import`` takes it: parquet, one row per passage and translation."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(vectors.shape[1])
    table = pa.table({
        "content_id": [c.content_id for c in chapters],
        "content_type": ["passage"] * len(chapters),
        "title": [f"{c.title} ({c.translation})" for c in chapters],
        "body": [" ".join(c.text.split()[:60]) for c in chapters],
        "passage_id": [c.passage_id for c in chapters],
        "translation": [c.translation for c in chapters],
        "series": [c.series for c in chapters],
        "position": pa.array([c.position for c in chapters], type=pa.int32()),
        "tags": [list(c.tags) for c in chapters],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
    })
    pq.write_table(table, path)


def _import_content(
    env: dict[str, str], work: Path, dim: int, seed: int, timings: dict[str, float]
) -> tuple[list[Passage], list[Chapter]]:
    """Every chapter in every translation, embedded and imported through ``content import``."""
    t0 = time.perf_counter()
    passages = load_passages()
    chapters = items_of(passages)
    t1 = time.perf_counter()
    vectors = embed_chapters(chapters, dim, seed=seed)
    t2 = time.perf_counter()
    content_file = work / "bible_catalog.parquet"
    _write_content_file(content_file, chapters, vectors)
    _run_cli(env, "content", "import", str(content_file))
    t3 = time.perf_counter()
    timings.update(load_s=round(t1 - t0, 2), embed_s=round(t2 - t1, 2), import_s=round(t3 - t2, 2))
    return passages, chapters


def _catalog_figures(chapters: list[Chapter]) -> dict[str, Any]:
    tags = {t for c in chapters for t in c.tags}
    return {
        "items": len(chapters),
        "passages": len({c.passage_id for c in chapters}),
        "translations": sorted({c.translation for c in chapters}),
        "tags": len(tags),
    }


def _translation_figures(world: World, events: list[dict[str, Any]]) -> dict[str, Any]:
    """How much the simulated readers switch translations."""
    usual = {str(r.user_id): r.usual_translation for r in world.readers}
    read: dict[str, set[str]] = {}
    switched = 0
    for e in events:
        tr = e["content_id"].split(":", 1)[0]
        read.setdefault(e["user_id"], set()).add(tr)
        switched += tr != usual[e["user_id"]]
    preferred_missing = sum(1 for r in world.readers if r.profile["preferred_translation"] not in world.translations)
    return {
        "events_in_other_translation": round(switched / len(events), 3) if events else 0.0,
        "readers_using_several": round(sum(1 for v in read.values() if len(v) > 1) / max(1, len(read)), 3),
        "readers_preferring_one_not_in_catalog": preferred_missing,
    }


def _session_passages(events: list[dict[str, Any]]) -> dict[str, tuple[str, set[str]]]:
    """Per reader: the latest session and the passages it showed (in any translation)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for e in events:  # in time order: the last session seen is the latest
        passage = e["content_id"].split(":", 1)[-1]
        session, seen = out.get(e["user_id"], ("", set()))
        if session != e["session_id"]:
            session, seen = e["session_id"], set()
        if e["signal_type"] == "view":
            seen.add(passage)
        out[e["user_id"]] = (session, seen)
    return out


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


# Long on purpose (~120 lines): the demo's steps in order around the children it starts (schema, key,
# relay, learner, API, content, behaviour, nightly, readouts); the shared processes and timers stay visible.
def _run_with_services(opts: DemoOptions, service_env: dict[str, str], progress: Progress, console: Console,
                       t_start: float, quiet: bool) -> dict[str, Any]:
    from personalization.config import Settings

    work = opts.work_dir
    work.mkdir(parents=True, exist_ok=True)
    dim = opts.embedding_dim or Settings().embedding.dim
    env = {**os.environ, **service_env, "PERSONALIZATION_EMBEDDING_DIM": str(dim),
           # The candidates' prior is popularity in [0, 1]; cosines of TF-IDF/SVD vectors are
           # smaller, so the demo weighs the similarity more than the default blend does.
           "PERSONALIZATION_RERANK_ALPHA": str(opts.rerank_alpha),
           "PYTHONUNBUFFERED": "1"}
    database_url = service_env["PERSONALIZATION_DATABASE_URL"]
    bootstrap = service_env["PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS"]
    prefix = env.get("PERSONALIZATION_KAFKA_TOPIC_PREFIX", "personalization")
    topic = names.events_topic(prefix)
    children: list[CliChild] = []
    figures: dict[str, Any] = {"users": opts.users, "days": opts.days, "embedding_dim": dim}
    demo_key_id: str | None = None
    try:
        # 1. Schema and an API key for the demo's own client.
        _run_cli(env, "db", "upgrade")
        created = json.loads(_run_cli(env, "keys", "create", "--name", f"demo-{uuid.uuid4().hex[:6]}", "--scopes",
                                      "ingest,profile:write,read,admin", "--json"))
        key = created["key"]
        # The key can do everything (admin): it is revoked when the demo ends, however it ends.
        demo_key_id = created["key_id"]

        # 2. The pipeline: CDC relay, learner, API server.  They start (the relay's JVM takes
        # seconds) while this process builds and imports the catalogue; no event is sent
        # before the import has committed, so the learner never sees content it lacks.
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

        # 3. Content: every chapter in KJV, ASV and WEB with TF-IDF + SVD embeddings, imported by the CLI.
        tc = progress.add_task("content: 3 translations", total=1)
        timings: dict[str, float] = {}
        figures["content_s"] = timings
        passages, chapters = _import_content(env, work, dim, opts.seed, timings)
        figures["catalog"] = _catalog_figures(chapters)
        progress.advance(tc)

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
        world = make_world(passages, opts.users, seed=opts.seed, fresh_ids=True)
        events = simulate_events(world, opts.days, seed=opts.seed + 1)
        figures["translations_read"] = _translation_figures(world, events)
        headers = {"authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
        experiment.set_up(base, headers)
        ingest = asyncio.run(_populate(base, headers, limits, world, events, opts, progress, probe))
        figures.update(ingest)

        # 5. Let the stream drain into the learner.
        t = progress.add_task("learner: catching up", total=ingest["events_stored"])
        _wait_learner(database_url, learner_group, topic, probe, ingest["events_stored"], progress, t,
                      [relay, learner])
        _check_user_embeddings(database_url, dim)
        probe.stop()
        figures["cdc_p50_ms"] = round(probe.percentile(50, since_ms=ingest["live_from_ms"]), 1)
        figures["cdc_p99_ms"] = round(probe.percentile(99, since_ms=ingest["live_from_ms"]), 1)
        figures["cdc_backfill_p99_ms"] = round(probe.percentile(99), 1)
        del figures["live_from_ms"]

        # 6. Nightly job (it trains the recommender too, when the platform has one).
        t = progress.add_task("nightly job", total=1)
        with_recommender = recommender.installed(base, headers)
        models_before = recommender.model_versions(base) if with_recommender else None
        t0 = time.perf_counter()
        _run_cli(env, "jobs", "nightly")
        figures["nightly_s"] = round(time.perf_counter() - t0, 2)
        if with_recommender:
            recommender.wait_for_models(base, headers, str(world.readers[0].user_id), models_before)
        progress.advance(t)

        # 7. Logins, recommendations, the evaluation and the readers acting on their lists.
        evaluation = asyncio.run(
            evaluate(base, headers, limits, world, chapters, database_url, _session_passages(events),
                     opts.candidates, opts.top_k, opts.eval_users, progress, with_recommender, opts.seed + 2)
        )
        figures.update(evaluation)

        # 8. The experiment's readout and the recommender's offline evaluation.
        t = progress.add_task("readout and offline evaluation", total=1)
        figures["experiment"] = experiment.readout(base, headers)
        figures["recommender"] = (
            recommender.evaluation(lambda *a: _run_cli(env, *a), opts.top_k) if with_recommender else None
        )
        progress.advance(t)
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
        # Every reader opens the app before the live day: the login pre-warm evaluates the
        # flag, which records their exposure; what they do from now on is the experiment's.
        t = progress.add_task("exposures: readers log in", total=len(world.readers))
        await experiment.expose(client, [str(r.user_id) for r in world.readers], opts.concurrency,
                                lambda: progress.advance(t))
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
    """Send ``events`` at about ``rate`` events/s in small batches (20 per second), stamped when sent.

    The live day is replayed as live traffic: its events occur now, after the readers'
    exposures, so the experiment's metrics count them.
    """
    per_tick = max(1, rate // 20)
    out: list[httpx.Response] = []
    start = time.perf_counter()
    pending: set[asyncio.Task[httpx.Response]] = set()
    for n, i in enumerate(range(0, len(events), per_tick)):
        delay = start + n / 20 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        stamp = datetime.now(UTC).isoformat()
        chunk = events[i : i + per_tick]
        for e in chunk:
            e["occurred_at"] = stamp
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


def _check_user_embeddings(database_url: str, dim: int) -> None:
    """Fail loudly where the learner would otherwise have learnt nothing.

    The learner skips content embeddings of another dimension than the deployment's,
    so a catalogue of the wrong dimension leaves every reader without an embedding
    (and every recommendation unpersonalized) without any error of its own.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE embedding IS NOT NULL),"
            " (SELECT count(*) FROM content_embeddings WHERE dim = %s) FROM user_embeddings", (dim,)
        ).fetchone()
    learnt, usable = (int(row[0]), int(row[1])) if row else (0, 0)
    if learnt == 0:
        raise DemoError(
            f"the learner built no user embedding: {usable} content embeddings have the configured dimension"
            f" {dim} (PERSONALIZATION_EMBEDDING_DIM); the API, the learner and the imported catalogue must agree"
        )


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
