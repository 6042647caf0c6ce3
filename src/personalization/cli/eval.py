"""``personalization eval recommendations``: offline evaluation on the stored events (issue 16).

Exit codes (:mod:`personalization.cli.common`): 0 done, 2 bad input (or nothing to
evaluate on), 4 PostgreSQL unavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from personalization.cli.common import ExitCode, err, exit_code_for, fail, load_settings
from personalization.errors import InvalidInput, PersonalizationError

app = typer.Typer(no_args_is_help=True, help="Offline evaluation.")


@app.command("recommendations")
def recommendations(
    holdout_days: float = typer.Option(None, "--holdout-days", help="test on the last N days of events"),
    holdout_fraction: float = typer.Option(None, "--holdout-fraction",
                                           help="test on the newest fraction F of events (default 0.2)"),
    k: int = typer.Option(10, "--k", help="list length (1..100)"),
    max_readers: int = typer.Option(5000, "--max-readers", min=1, help="test readers sampled at most"),
    json_out: bool = typer.Option(False, "--json", help="print only the JSON line"),
) -> None:
    """Time-based split; ndcg@k, recall@k, coverage of this recommender, popularity and implicit's ALS/BPR/cosine."""
    from personalization import logging_setup
    from personalization.recommend.evaluate import EvalReport, evaluate, goal_met
    from personalization.store.db import Database

    logging_setup.configure()
    # The whole tree once; a bad PERSONALIZATION_* variable is named on exit 2.
    settings = load_settings()

    async def run(update: Callable[[str], None]) -> EvalReport:
        db = Database(settings, min_size=1, max_size=2)
        await db.open()
        try:
            return await evaluate(db, settings.recommend, dim=settings.embedding.dim,
                                  decay=settings.decay.config(), k=k,
                                  holdout_days=holdout_days, holdout_fraction=holdout_fraction,
                                  max_readers=max_readers, on_step=update)
        finally:
            await db.close()

    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                      transient=True, disable=json_out or not err.is_terminal) as progress:
            task = progress.add_task("starting", total=None)
            report = asyncio.run(run(lambda s: progress.update(task, description=s)))
    except InvalidInput as exc:
        fail("; ".join(e.msg for e in exc.errors), ExitCode.BAD_INPUT)
    except PersonalizationError as exc:
        fail(f"evaluation failed: {exc}", exit_code_for(exc))
    out = {"eval": "recommendations", **report.as_dict(), "goals": goal_met(report)}
    if not json_out:
        table = Table(f"method (k={k})", f"ndcg@{k}", f"recall@{k}", "coverage", "seconds",
                      title=f"{report.test_readers} test readers, cut-off {report.cutoff:%Y-%m-%d %H:%M} UTC")
        for name, m in report.methods.items():
            table.add_row(name, f"{m.ndcg:.4f}", f"{m.recall:.4f}", f"{m.coverage:.3f}", f"{m.seconds:.2f}")
        Console(stderr=True).print(table)
    typer.echo(orjson.dumps(out).decode())
