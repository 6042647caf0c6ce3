"""The ``personalization`` command line (Typer).  Entry points stay thin.

Every command exits with the codes of :class:`personalization.cli.common.ExitCode` and
reports an error as one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from personalization.cli.common import ExitCode, exit_code_for, fail
from personalization.config import get_settings
from personalization.errors import PersonalizationError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Personalization signal platform.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (each prints one JSON line with --json).")
app.add_typer(db_app, name="db")
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


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (idempotent); creates the database if missing."""
    from personalization.store import migrate

    settings = get_settings()
    try:
        applied = migrate.upgrade(settings.database_url)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    if applied:
        typer.echo(f"applied: {', '.join(applied)}")
    else:
        typer.echo("schema is up to date")


@db_app.command("sql")
def db_sql() -> None:
    """Print the migrations' SQL without connecting."""
    from personalization.store import migrate

    sys.stdout.write(migrate.render_sql())


@app.command("serve")
def serve(
    host: str = typer.Option(None, help="bind address (default PERSONALIZATION_HTTP_HOST)"),
    port: int = typer.Option(None, min=1, max=65535, help="port (default PERSONALIZATION_HTTP_PORT)"),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes"),
) -> None:
    """Run the HTTP API (OpenAPI at /docs)."""
    import uvicorn

    from personalization import logging_setup
    from personalization.store import migrate

    settings = get_settings()
    logging_setup.configure()
    try:
        migrate.upgrade(settings.database_url)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    uvicorn.run(
        "personalization.api.app:create_app",
        factory=True,
        host=host or settings.http_host,
        port=port or settings.http_port,
        workers=workers,
        log_config=None,
        access_log=False,
    )


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
    from personalization.bench.ingest import run_ingest_bench

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
    from personalization.bench.cdc import run_cdc_bench

    if broker not in ("auto", "local", "configured"):
        fail("--broker must be auto, local or configured", ExitCode.BAD_INPUT)
    _bench(lambda: run_cdc_bench(get_settings(), rate=rate, duration_s=duration, burst=burst, broker=broker), json_out)  # type: ignore[arg-type]


@bench_app.command("serve")
def bench_serve(
    users: int = typer.Option(1000, min=10),
    content: int = typer.Option(5000, min=200, help="content items with embeddings"),
    dim: int = typer.Option(384, min=1, help="embedding dimension"),
    requests: int = typer.Option(5000, min=100, help="calls per in-process measurement"),
    concurrency: int = typer.Option(2, min=1, help="concurrent closed-loop HTTP clients"),
    duration: float = typer.Option(5.0, min=0.5, help="seconds per HTTP measurement"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Read path: preferences, flag, rerank of 100 (in process and HTTP) against a bare HGETALL."""
    from personalization.bench.serve import run_serve_bench

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
    from personalization.bench.nightly import run_nightly_bench

    _bench(
        lambda: run_nightly_bench(
            get_settings(), events=events, users=users, entities=entities, repeat=repeat, progress=not json_out
        ),
        json_out,
    )


@bench_app.command("erase")
def bench_erase(
    events: int = typer.Option(1_000_000, "--events", min=10_000, help="events in the database"),
    users: int = typer.Option(5000, min=10),
    user_events: int = typer.Option(10_000, "--user-events", min=1, help="events of each erased user"),
    victims: int = typer.Option(3, min=1, help="users erased (median reported)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Erase one user with 10000 events among 1000000 (erase_s) against bare SQL deletes and a bare refresh."""
    from personalization.bench.erase import run_erase_bench

    _bench(
        lambda: run_erase_bench(get_settings(), users=users, events=events, user_events=user_events, victims=victims),
        json_out,
    )


@app.command("demo")
def demo(
    users: int = typer.Option(1000, min=10, envvar="PERSONALIZATION_DEMO_USERS", help="simulated readers"),
    days: int = typer.Option(28, min=7, envvar="PERSONALIZATION_DEMO_DAYS", help="simulated days of behaviour"),
    seed: int = typer.Option(42, help="random seed of the simulation"),
    eval_users: int = typer.Option(300, min=1, help="readers whose recommendations are evaluated"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line with the report's figures"),
) -> None:
    """Run the whole system end to end on the KJV and a simulated population, then report."""
    from personalization import logging_setup
    from personalization.demo.report import print_report
    from personalization.demo.runner import DemoError, DemoOptions, run_demo

    logging_setup.configure("WARNING")
    console = Console(stderr=True)
    opts = DemoOptions(users=users, days=days, seed=seed, eval_users=eval_users)
    try:
        figures = run_demo(opts, console, quiet=False)
    except (DemoError, PersonalizationError) as exc:
        fail(f"demo failed: {exc}", exit_code_for(exc))
    except RuntimeError as exc:  # the local stack explains missing packages, ports, disk
        fail(str(exc), ExitCode.FAILED)
    if json_out:
        import orjson

        typer.echo(orjson.dumps(figures).decode())
    else:
        print_report(figures, Console())
    if figures["personalized_hit_rate"] <= figures["popularity_hit_rate"]:
        fail(
            f"check failed: personalized hit rate {figures['personalized_hit_rate']} is not above popularity's "
            f"{figures['popularity_hit_rate']}",
            ExitCode.FAILED,
        )


@bench_app.command("learner")
def bench_learner(
    events: int = typer.Option(200_000, "--events", min=1000, help="events on the throughput topic"),
    users: int = typer.Option(5000, min=1),
    contents: int = typer.Option(2000, min=1, help="content items with embeddings"),
    dim: int = typer.Option(384, min=1, help="embedding dimension"),
    rate: int = typer.Option(1000, min=10, help="insert rate of the freshness part (events/s)"),
    duration: float = typer.Option(15.0, min=3.0, help="seconds of the freshness part"),
    repeat: int = typer.Option(1, min=1, help="throughput runs (medians reported)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line"),
) -> None:
    """Online learner: one and two consumers against a bare consume loop; freshness through the relay."""
    from personalization.bench.learner import run_learner_bench

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


def _register_optional() -> None:
    # Sub-apps of other packages; each is optional so a partial install still runs.
    import importlib

    for module, name in (
        ("personalization.cli.cdc", "cdc"),
        ("personalization.cli.stack", "stack"),
        ("personalization.cli.learner", "learner"),
        ("personalization.cli.jobs", "jobs"),
        ("personalization.cli.keys", "keys"),
        ("personalization.cli.users", "users"),
        ("personalization.cli.content", "content"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("personalization.cli"):
                continue
            raise
        app.add_typer(mod.app, name=name)
        # A module may bring further top-level sub-apps (cli.jobs also has `features`).
        for extra_name, extra_app in getattr(mod, "EXTRA_APPS", {}).items():
            app.add_typer(extra_app, name=extra_name)


_register_optional()
