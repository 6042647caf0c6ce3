"""``personalization demo``: the end-to-end demo (development tooling, registered as a CLI plugin)."""

from __future__ import annotations

import typer
from rich.console import Console

from personalization.cli.common import ExitCode, exit_code_for, fail
from personalization.errors import PersonalizationError


def register(app: typer.Typer) -> None:
    """Entry point of the ``personalization.cli`` plugin group: adds ``demo``."""
    app.command("demo")(demo)


def demo(
    users: int = typer.Option(1000, min=10, envvar="PERSONALIZATION_DEMO_USERS", help="simulated readers"),
    days: int = typer.Option(28, min=7, envvar="PERSONALIZATION_DEMO_DAYS", help="simulated days of behaviour"),
    seed: int = typer.Option(42, help="random seed of the simulation"),
    eval_users: int = typer.Option(300, min=1, help="readers whose recommendations are evaluated"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line with the report's figures"),
) -> None:
    """Run the whole system end to end on the Bible (KJV, ASV, WEB) and a simulated population, then report."""
    from personalization import logging_setup
    from personalization_dev.demo.errors import DemoError
    from personalization_dev.demo.report import print_report
    from personalization_dev.demo.runner import DemoOptions, run_demo

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
    if "recommender_hit_rate" in figures and figures["recommender_hit_rate"] <= figures["popularity_hit_rate"]:
        fail(
            f"check failed: the recommender's hit rate {figures['recommender_hit_rate']} is not above "
            f"popularity's {figures['popularity_hit_rate']}",
            ExitCode.FAILED,
        )
