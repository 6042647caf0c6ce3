"""``personalization experiments ...``: results of a flag's experiment, its phases, metric definitions.

``results FLAG --metric M`` prints a table of the two variants, the relative uplift with
its 95% interval drawn on a scale, the p-value, SRM p-value and chance to win (``--json``:
the route's document as one line).  ``metrics put|list|show|delete`` manage the metric
definitions.  Exit codes (:mod:`personalization.cli.common`): 0 success, 1 the work
failed, 2 bad input or an unknown flag, metric or phase (nothing written), 4 a service
unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from personalization.cli.common import ExitCode, exit_code_for, fail, load_settings
from personalization.core.experiments import MetricIn
from personalization.errors import PersonalizationError
from personalization.experiments.service import ExperimentService

app = typer.Typer(no_args_is_help=True, help="Experiments on feature flags: results, phases, metrics.")
metrics_app = typer.Typer(no_args_is_help=True, help="Metric definitions of experiments.")
app.add_typer(metrics_app, name="metrics")

T = TypeVar("T")
_out = Console()


def _run(work: Callable[[ExperimentService], Awaitable[T]]) -> T:
    """Run ``work`` against the configured services; library errors become exit codes."""
    from personalization.composition import open_platform

    # A reader of results records no exposures.
    settings = load_settings(experiments={"record_exposures": False})

    async def main() -> T:
        async with open_platform(settings) as p:
            return await work(p.experiments)

    try:
        return asyncio.run(main())
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))


def _pct(v: float) -> str:
    return f"{v * 100:+.2f}%"


def interval_line(lo: float, estimate: float, hi: float, width: int = 48) -> Text:
    """The 95% interval drawn on a scale that always shows 0: ``[---●---]`` and ``|`` at 0."""
    left, right = min(lo, 0.0), max(hi, 0.0)
    span = (right - left) or 1.0
    left, right = left - 0.05 * span, right + 0.05 * span

    def col(v: float) -> int:
        return max(0, min(width - 1, round((v - left) / (right - left) * (width - 1))))

    cells = [" "] * width
    a, b, e, z = col(lo), col(hi), col(estimate), col(0.0)
    for i in range(a, b + 1):
        cells[i] = "─"
    cells[z] = "│" if not a < z < b else "┼"
    cells[a], cells[b] = "[", "]"
    cells[e] = "●"
    colour = "green" if lo > 0 else "red" if hi < 0 else "yellow"
    line = Text(f"{_pct(left):>9} ")
    line.append("".join(cells), style=colour)
    line.append(f" {_pct(right)}")
    return line


def render_results(doc: dict[str, Any], console: Console) -> None:
    """The results document as a Rich table plus the drawn interval."""
    title = f"{doc['flag']} · {doc['metric']} · phase {doc['phase']}" + (" · CUPED" if doc["cuped"] else "")
    table = Table(title=title)
    for col in ("variant", "readers", "expected share", "mean", "variance"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in doc["variants"]:
        table.add_row(
            v["variant"], f"{v['users']:,}", f"{doc['expected_split'][v['variant']]:.2%}", f"{v['mean']:.4f}",
            f"{v['variance']:.4f}",
        )
    console.print(table)
    up = doc["relative_uplift"]
    if up["estimate"] is None:
        console.print(Text(f"warning: {doc['warning']}", style="yellow"))
    else:
        lo, hi = up["ci95"]
        console.print(f"relative uplift of on over off: {_pct(up['estimate'])}  95% CI [{_pct(lo)}, {_pct(hi)}]")
        console.print(interval_line(lo, up["estimate"], hi))
        console.print(f"p-value {up['p_value']:.4g}   chance to win {doc['chance_to_win']:.1%}")
    srm = doc["srm_p_value"]
    if srm is not None:
        style = "red" if srm < 0.001 else ""
        console.print(Text(f"SRM p-value {srm:.4g}" + ("  (sample ratio mismatch!)" if srm < 0.001 else ""), style))


@app.command("results")
def results(
    flag: Annotated[str, typer.Argument(help="the flag whose experiment to analyse")],
    metric: Annotated[str, typer.Option("--metric", "-m", help="name of a metric definition")],
    cuped: Annotated[bool, typer.Option("--cuped", help="adjust with the pre-exposure value (CUPED)")] = False,
    phase: Annotated[int | None, typer.Option("--phase", min=1, help="phase (default: the current one)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the results as one JSON line")] = False,
) -> None:
    """The relative uplift of on over off with its interval, p-value, SRM and chance to win."""
    doc = _run(lambda svc: svc.results(flag, metric, phase=phase, cuped=cuped))
    if json_out:
        typer.echo(orjson.dumps(doc).decode())
    else:
        render_results(doc, _out)


@app.command("show")
def show(
    flag: Annotated[str, typer.Argument(help="the flag")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False,
) -> None:
    """The flag's phases and their exposure counts."""
    doc = _run(lambda svc: svc.summary(flag))
    if json_out:
        typer.echo(orjson.dumps(doc).decode())
        return
    table = Table(title=f"{flag}: phases")
    for col in ("phase", "rules versions", "split (on)", "started", "exposures"):
        table.add_column(col)
    for ph in doc["phases"]:
        lo, hi = ph["rules_versions"]
        counts = ", ".join(f"{e['variant']}/{e['reason']}: {e['users']:,}" for e in ph["exposures"]) or "none"
        table.add_row(str(ph["phase"]), f"{lo}..{hi if hi is not None else ''}", f"{ph['rollout_percent']}%",
                      ph["started_at"], counts)
    _out.print(table)


@metrics_app.command("put")
def metrics_put(
    name: Annotated[str, typer.Argument(help="metric name")],
    signal_type: Annotated[list[str], typer.Option("--signal-type", "-s", help="signal type counted (repeatable)")],
    content_type: Annotated[
        list[str] | None, typer.Option("--content-type", "-c", help="content type counted (repeatable; default all)")
    ] = None,
    aggregation: Annotated[str, typer.Option(help="count | sum_weight | any")] = "count",
    window_days: Annotated[int, typer.Option(help="days after the first exposure that count")] = 7,
    description: Annotated[str | None, typer.Option(help="free text")] = None,
) -> None:
    """Create or replace a metric definition."""
    try:
        body = MetricIn.model_validate(
            {
                "signal_types": signal_type,
                "content_types": content_type or None,
                "aggregation": aggregation,
                "window_days": window_days,
                "description": description,
            }
        )
    except ValidationError as exc:
        e = exc.errors()[0]
        fail(f"{e['loc'][0]}: {e['msg']}", ExitCode.BAD_INPUT)
    metric, created = _run(lambda svc: svc.put_metric(name, body))
    typer.echo(f"{'created' if created else 'replaced'}: {orjson.dumps(metric.model_dump(mode='json')).decode()}")


@metrics_app.command("list")
def metrics_list(json_out: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False) -> None:
    """Every metric definition."""
    found = _run(lambda svc: svc.list_metrics())
    if json_out:
        typer.echo(orjson.dumps([m.model_dump(mode="json") for m in found]).decode())
        return
    table = Table(title="metrics")
    for col in ("name", "signal types", "content types", "aggregation", "window"):
        table.add_column(col)
    for m in found:
        table.add_row(m.name, ", ".join(m.signal_types), ", ".join(m.content_types or ["(all)"]), m.aggregation,
                      f"{m.window_days} d")
    _out.print(table)


@metrics_app.command("delete")
def metrics_delete(name: Annotated[str, typer.Argument(help="metric name")]) -> None:
    """Delete a metric definition."""
    _run(lambda svc: svc.delete_metric(name))
    typer.echo(f"deleted: {name}")
