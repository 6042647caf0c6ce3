"""``personalization jobs ...`` and ``personalization features ...`` (issue 5).

Exit codes (:mod:`personalization.cli.common`): 0 success, 1 the run failed (recorded in
the ledger), 2 bad input (nothing written), 3 another nightly run holds the lock, 4
PostgreSQL unavailable.  Log lines are JSON on stderr.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from personalization.cli.common import ExitCode, err, exit_code_for, fail, load_settings
from personalization.config import NightlySettings
from personalization.errors import InvalidInput, PersonalizationError

if TYPE_CHECKING:
    pass

if TYPE_CHECKING:
    from personalization.nightly.job import NightlyJob

app = typer.Typer(no_args_is_help=True, help="Nightly feature-store job and its scheduler.")
features_app = typer.Typer(no_args_is_help=True, help="Feature-store data for training.")

_STEPS = {"refresh": "refreshing user_signal_rollups + decay pass", "copy": "copying into the dated snapshot",
          "swap": "swapping the snapshot in", "done": "done"}


def _sigterm_exits() -> None:
    # SIGTERM becomes SystemExit so the job's handlers record the failed run in the ledger.
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _setup() -> tuple[str, NightlySettings]:
    from personalization import logging_setup

    logging_setup.configure()
    settings = load_settings()
    return settings.database.url, settings.nightly


def _job(url: str, nightly: NightlySettings) -> NightlyJob:
    from personalization.nightly.job import NightlyJob

    # The deployment's decay (PERSONALIZATION_LEARNER_SIGNALS), as the online learner has it.
    return NightlyJob(url, nightly, decay=load_settings().decay.config())


def _quiet(json_out: bool) -> bool:
    # No progress display for --json, nor when stderr is not a terminal: there Rich shows
    # no spinner anyway, only a blank line when it stops, which would precede an error line.
    return json_out or not err.is_terminal


def _jsonable(v: Any) -> Any:
    return orjson.loads(orjson.dumps(v, default=str))


@app.command("nightly")
def nightly(
    as_of: str = typer.Option(None, "--as-of", help="snapshot date YYYY-MM-DD in the job's time zone (default today)"),
    json_out: bool = typer.Option(False, "--json", help="print the outcome as one JSON line"),
    skip_recommend: bool = typer.Option(False, "--skip-recommend", help="do not retrain the recommender"),
) -> None:
    """Refresh user_signal_rollups, write the dated feature-store snapshot, retrain the recommender."""
    from personalization.nightly.job import NightlyRunning
    from personalization.recommend.nightly import train_blocking

    url, settings = _setup()
    _sigterm_exits()
    job = _job(url, settings)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                      transient=True, disable=_quiet(json_out)) as progress:
            task = progress.add_task("starting", total=None)
            result = job.run(as_of, on_step=lambda s: progress.update(task, description=_STEPS.get(s, s)))
            if not skip_recommend:
                # Collaborative filtering and item neighbours, from PostgreSQL alone.
                recommend = train_blocking(load_settings(), on_step=lambda s: progress.update(task, description=s))
    except InvalidInput as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except NightlyRunning as exc:
        fail(str(exc), ExitCode.REFUSED)
    except PersonalizationError as exc:
        fail(f"nightly run failed: {exc}", exit_code_for(exc))
    out = {"run_id": result.run_id, "as_of": result.as_of.isoformat(), "rows": result.rows,
           "dropped_snapshots": [d.isoformat() for d in result.dropped], "duration_s": round(result.duration_s, 3),
           "computed_at": result.computed_at.isoformat(), "steps": result.steps, "refresh": result.refresh}
    if not skip_recommend:
        out["recommend"] = recommend.as_dict()
    if json_out:
        typer.echo(orjson.dumps(out).decode())
    else:
        err.print(f"[green]snapshot {out['as_of']} written[/]: {result.rows} rows in {out['duration_s']} s"
                  f" (run {result.run_id}; dropped {len(result.dropped)} expired)", highlight=False)
        if not skip_recommend:
            err.print(f"[green]recommendations trained[/]: {recommend.events} events of {recommend.readers} readers,"
                      f" {recommend.passages} passages (versions {recommend.versions})", highlight=False)


@app.command("schedule")
def schedule(
    metrics_port: int = typer.Option(0, help="serve Prometheus metrics on this port (0: off)"),
) -> None:
    """Run the nightly job on PERSONALIZATION_NIGHTLY_CRON in PERSONALIZATION_NIGHTLY_TIMEZONE (until stopped)."""
    from personalization.nightly.scheduler import NightlyScheduler

    url, settings = _setup()
    _sigterm_exits()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    try:
        from personalization.recommend.nightly import train_blocking

        full = load_settings()

        def retrain(_: object) -> None:
            train_blocking(full)

        sched = NightlyScheduler(_job(url, settings), after_run=retrain)
        err.print(f"scheduler: cron {settings.cron!r} in {settings.timezone}", highlight=False)
        sched.start(blocking=True)
    except InvalidInput as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except (KeyboardInterrupt, SystemExit):
        err.print("scheduler stopped")


@app.command("runs")
def runs(
    limit: int = typer.Option(20, min=1, max=1000),
    json_out: bool = typer.Option(False, "--json", help="one JSON line per run"),
) -> None:
    """The ledger of nightly runs, newest first."""
    from rich.table import Table

    url, settings = _setup()
    try:
        rows = _job(url, settings).runs(limit)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    if json_out:
        for r in rows:
            typer.echo(orjson.dumps(_jsonable(r)).decode())
        return
    table = Table("run", "as_of", "trigger", "status", "started", "finished", "rows", "error")
    for r in rows:
        table.add_row(str(r["run_id"]), str(r["as_of"]), r["trigger"], r["status"], str(r["started_at"]),
                      str(r["finished_at"] or ""), str(r["row_count"] or ""), (r["error"] or "")[:80])
    Console().print(table)


@app.command("snapshots")
def snapshots(json_out: bool = typer.Option(False, "--json")) -> None:
    """The feature-store snapshots that exist."""
    url, settings = _setup()
    try:
        rows = _job(url, settings).snapshots()
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    for r in rows:
        if json_out:
            typer.echo(orjson.dumps(_jsonable(r)).decode())
        else:
            typer.echo(f"{r['as_of']}  rows={r['row_count']}  computed_at={r['computed_at']}  run={r['run_id']}")


@features_app.command("export")
def export(
    entities: Path = typer.Option(..., "--entities", help="CSV (with header) or Parquet: user_id, event_timestamp"
                                                          "[, label]; naive timestamps are UTC"),
    out: Path = typer.Option(..., "--out", help="Parquet file to write"),
    json_out: bool = typer.Option(False, "--json", help="print the outcome as one JSON line"),
) -> None:
    """Point-in-time join of entity rows with the feature snapshots (no future values)."""
    from personalization.nightly.export import export_features

    url, settings = _setup()
    try:
        with Progress(SpinnerColumn(), TextColumn("exporting"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err, transient=True, disable=_quiet(json_out)) as progress:
            task = progress.add_task("export", total=None)
            result = export_features(url, entities, out, settings, on_rows=lambda n: progress.advance(task, n))
    except InvalidInput as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except PersonalizationError as exc:
        fail(f"export failed: {exc}", exit_code_for(exc))
    summary = {"rows": result.rows, "rows_with_features": result.rows_with_features,
               "duration_s": round(result.duration_s, 3), "out": str(result.out)}
    if json_out:
        typer.echo(orjson.dumps(summary).decode())
    else:
        err.print(f"[green]wrote {result.rows} rows[/] ({result.rows_with_features} with features) to {out}"
                  f" in {summary['duration_s']} s", highlight=False)

# Registered by cli.main next to ``jobs`` as the top-level ``features`` command group.
EXTRA_APPS = {"features": features_app}
