"""``personalization bench ...``: the benchmarks (development tooling, registered as a CLI plugin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from personalization.cli.common import ExitCode, exit_code_for, fail
from personalization.config import DEFAULT_EMBEDDING_DIM, get_settings
from personalization.errors import PersonalizationError

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (each prints one JSON line with --json).")


def register(app: typer.Typer) -> None:
    """Entry point of the ``personalization.cli`` plugin group: adds ``bench``."""
    app.add_typer(bench_app, name="bench")


def _bench(run: Callable[[], dict[str, Any]], json_out: bool, width: int = 34) -> None:
    """Run one benchmark; print its one JSON line (``--json``) or an aligned table.

    A failed run exits 1 (4 when PostgreSQL or Redis is unreachable, 2 for bad input).
    """
    import orjson

    try:
        result = run()
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    except ValueError as exc:
        fail(str(exc), ExitCode.FAILED)
    if json_out:
        typer.echo(orjson.dumps(result).decode())
    else:
        for k, v in result.items():
            typer.echo(f"{k:{width}} {v}")


@bench_app.command("ingest")
def bench_ingest(
    events: int = typer.Option(200_000, "--events", min=1000, help="events per pass"),
    users: int = typer.Option(3000, min=1),
    concurrency: int = typer.Option(8, min=1, help="concurrent HTTP clients"),
    batch: int = typer.Option(500, min=1, help="events per request / library call"),
    http_workers: int = typer.Option(2, min=1, help="uvicorn worker processes of the HTTP pass"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Ingest throughput: library and HTTP against a bare COPY baseline."""
    from personalization_dev.bench.ingest import run_ingest_bench

    settings = get_settings()
    _bench(
        lambda: run_ingest_bench(
            settings,
            events=events,
            users=users,
            concurrency=concurrency,
            batch=batch,
            progress=not json_out,
            http_workers=http_workers,
        ),
        json_out,
    )


@bench_app.command("cdc")
def bench_cdc(
    rate: int = typer.Option(1000, min=1, help="inserts per second of the steady phase"),
    duration: float = typer.Option(10.0, min=1, help="seconds of the steady phase"),
    burst: int = typer.Option(50_000, min=1, help="events inserted in one burst"),
    broker: str = typer.Option("auto", help="auto | local | configured"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """CDC commit-to-consume latency at a fixed rate, burst throughput and relay start-up."""
    from personalization_dev.bench.cdc import run_cdc_bench

    if broker not in ("auto", "local", "configured"):
        fail("--broker must be auto, local or configured", ExitCode.BAD_INPUT)
    _bench(lambda: run_cdc_bench(get_settings(), rate=rate, duration_s=duration, burst=burst, broker=broker), json_out)  # type: ignore[arg-type]


@bench_app.command("serve")
def bench_serve(
    users: int = typer.Option(1000, min=10),
    content: int = typer.Option(5000, min=200, help="content items with embeddings"),
    dim: int = typer.Option(DEFAULT_EMBEDDING_DIM, min=1, help="embedding dimension"),
    requests: int = typer.Option(5000, min=100, help="calls per in-process measurement"),
    concurrency: int = typer.Option(2, min=1, help="concurrent closed-loop HTTP clients"),
    duration: float = typer.Option(5.0, min=0.5, help="seconds per HTTP measurement"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Read path: preferences, flag, rerank of 100 (in process and HTTP) against a bare HGETALL."""
    from personalization_dev.bench.serve import run_serve_bench

    _bench(
        lambda: run_serve_bench(
            get_settings(),
            users=users,
            content=content,
            dim=dim,
            requests=requests,
            concurrency=concurrency,
            duration_s=duration,
        ),
        json_out,
    )


@bench_app.command("nightly")
def bench_nightly(
    events: int = typer.Option(1_000_000, "--events", min=1000, help="events to load"),
    users: int = typer.Option(50_000, min=1),
    entities: int = typer.Option(100_000, min=1, help="entity rows of the point-in-time export"),
    repeat: int = typer.Option(3, min=1, help="timed runs of job and baseline (medians reported)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Nightly job (refresh + copy) against the bare GROUP BY aggregate; point-in-time export rate."""
    from personalization_dev.bench.nightly import run_nightly_bench

    _bench(
        lambda: run_nightly_bench(
            get_settings(), events=events, users=users, entities=entities, repeat=repeat, progress=not json_out
        ),
        json_out,
    )


@bench_app.command("erase")
def bench_erase(
    events: int = typer.Option(6_000_000, "--events", min=10_000, help="events in the database"),
    users: int = typer.Option(200_000, min=100),
    user_events: int = typer.Option(1000, "--user-events", min=1, help="events of each erased user"),
    sessions: int = typer.Option(50, min=1, help="sessions of each erased user"),
    sequential: int = typer.Option(20, min=1, help="erase requests one after another (p50/p99)"),
    concurrent: int = typer.Option(20, min=1, help="erase requests started at once"),
    redis_keys: int = typer.Option(2_000_000, "--redis-keys", min=0, help="keys in Redis (filler + the victims')"),
    timeout_s: float = typer.Option(300.0, "--timeout-s", min=1, help="longest wait for the last completion"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Erase requests (p99, 20 at once, time to completion) at 6M events and 2M keys, against bare SQL."""
    from personalization_dev.bench.erase import run_erase_bench

    _bench(
        lambda: run_erase_bench(get_settings(), users=users, events=events, user_events=user_events,
                                sessions=sessions, sequential=sequential, concurrent=concurrent,
                                redis_keys=redis_keys, timeout_s=timeout_s),
        json_out,
    )


@bench_app.command("learner")
def bench_learner(
    events: int = typer.Option(200_000, "--events", min=1000, help="events on the throughput topic"),
    users: int = typer.Option(5000, min=1),
    contents: int = typer.Option(2000, min=1, help="content items with embeddings"),
    dim: int = typer.Option(DEFAULT_EMBEDDING_DIM, min=1, help="embedding dimension"),
    rate: int = typer.Option(1000, min=10, help="insert rate of the freshness part (events/s)"),
    duration: float = typer.Option(15.0, min=3.0, help="seconds of the freshness part"),
    repeat: int = typer.Option(1, min=1, help="throughput runs (medians reported)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Online learner: one and two consumers against a bare consume loop; freshness through the relay."""
    from personalization_dev.bench.learner import run_learner_bench

    _bench(
        lambda: run_learner_bench(
            get_settings(),
            events=events,
            users=users,
            contents=contents,
            dim=dim,
            rate=rate,
            duration_s=duration,
            repeat=repeat,
        ),
        json_out,
    )


@bench_app.command("experiments")
def bench_experiments(
    exposures: int = typer.Option(1_000_000, "--exposures", min=1000, help="exposed readers (one exposure each)"),
    events: int = typer.Option(10_000_000, "--events", min=1000, help="events around the exposures"),
    lift: float = typer.Option(0.05, min=0.0, max=1.0, help="true relative lift of bookmarks in the on arm"),
    repeat: int = typer.Option(3, min=1, help="runs of each timed results call"),
    read_users: int = typer.Option(2000, min=100, help="readers of the flag-read latency pass (per mode)"),
    concurrency: int = typer.Option(16, min=1, help="concurrent flag reads"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Experiment results over 1M exposures and 10M events against the bare SQL; flag-read cost of exposures."""
    from personalization_dev.bench.experiments import run_experiments_bench

    _bench(
        lambda: run_experiments_bench(
            get_settings(),
            readers=exposures,
            events=events,
            lift=lift,
            repeat=repeat,
            read_users=read_users,
            concurrency=concurrency,
            progress=not json_out,
        ),
        json_out,
    )


@bench_app.command("recommend")
def bench_recommend(
    items: int = typer.Option(100_000, min=100, help="catalogue passages (50-chapter books)"),
    readers: int = typer.Option(100_000, min=10),
    events_per_reader: int = typer.Option(20, min=4),
    requests: int = typer.Option(3000, min=100, help="in-process requests measured"),
    rate: float = typer.Option(300.0, min=1, help="offered HTTP requests per second"),
    duration: float = typer.Option(10.0, min=1, help="seconds of the HTTP run"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Recommendation latency in process (HNSW vs exact in the same run, Redis down) and over HTTP."""
    from rich.console import Console

    from personalization_dev.bench.recommend import run_recommend_bench

    settings = get_settings()
    console = Console(stderr=True)
    with console.status("starting", spinner="dots") as status:
        _bench(lambda: run_recommend_bench(settings, items=items, readers=readers, events_per_reader=events_per_reader,
                                           requests=requests, rate=rate, duration_s=duration,
                                           on_step=lambda s: status.update(s)), json_out)


@bench_app.command("ann")
def bench_ann(
    n: int = typer.Option(100_000, min=1000, help="vectors"),
    dim: int = typer.Option(384, min=2),
    queries: int = typer.Option(500, min=10),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """usearch vs faiss-cpu vs hnswlib (build, memory, recall@10 vs exact, latency); exact search as baseline."""
    from personalization_dev.bench.recommend import run_ann_bench

    _bench(lambda: run_ann_bench(n, dim, queries), json_out)
