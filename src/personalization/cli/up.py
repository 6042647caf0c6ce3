"""``personalization up`` (the whole platform, supervised) and ``personalization status``.

Exit codes (:mod:`personalization.cli.common`): ``up`` 0 after an orderly stop (SIGTERM,
SIGINT, SIGHUP), 1 the node could not start, 2 bad input (an unknown role, a bad
setting), 3 another ``up`` runs from the same data directory, 4 a service is
unavailable.  ``status`` 0 every component up, 1 some component is not (or the
supervisor is gone), 4 no platform ever ran from the data directory.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import orjson
import typer

from personalization.cli.common import ExitCode, err, exit_code_for, fail, load_settings

if TYPE_CHECKING:
    from rich.progress import TaskID

    from personalization.config import Settings

DATA_DIR_OPTION = typer.Option(
    None, "--data-dir", help="Directory of the platform's state (default PERSONALIZATION_DATA_DIR or .personalization)."
)


def _settings(data_dir: Path | None) -> Settings:
    # The tree, read once for the invocation; --data-dir over PERSONALIZATION_DATA_DIR.
    return load_settings(platform={"data_dir": data_dir})


def up(
    only: str = typer.Option(
        None, "--only", help="Comma-separated roles to run (api, relay, learner, invalidator, scheduler); "
        "default PERSONALIZATION_PLATFORM_ROLES, else all."
    ),
    workers: int = typer.Option(None, "--workers", min=1, help="API worker processes (default 1)."),
    learners: int = typer.Option(None, "--learners", min=1, help="Learner processes (default 1)."),
    host: str = typer.Option(None, help="API bind address (default PERSONALIZATION_HTTP_HOST)."),
    port: int = typer.Option(
        None, min=0, max=65535, help="API port (0: a free one; default PERSONALIZATION_HTTP_PORT)."
    ),
    log_dir: Path | None = typer.Option(None, "--log-dir", help="One log file per component here instead of stderr."),
    stop_timeout: float = typer.Option(None, "--stop-timeout", min=1.0, help="Bound of the orderly shutdown (s)."),
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Run every component as a supervised child (the embedded stack first when no service is set).

    Prints `export PERSONALIZATION_...=` lines on stdout once everything is started; logs go to stderr.

    SIGTERM or Ctrl-C stops the components in order (API, relay, then the consumers) within the bound.
    """
    from personalization.errors import PersonalizationError
    from personalization.platform.components import UnknownRole
    from personalization.platform.logs import LogSink
    from personalization.platform.runner import PortInUse, UpOptions, run_up
    from personalization.platform.state import AlreadyRunning

    settings = _settings(data_dir)
    platform, http = settings.platform, settings.http
    roles = tuple(r.strip() for r in only.split(",") if r.strip()) if only is not None else platform.roles
    log_dir = log_dir or platform.log_dir
    opts = UpOptions(
        roles=roles, host=host or http.host, port=http.port if port is None else port,
        api_workers=workers or platform.api_workers, learners=learners or platform.learners,
        log_dir=log_dir.resolve() if log_dir is not None else None,
        stop_timeout_s=stop_timeout or platform.stop_timeout_s,
    )
    if opts.log_dir is not None:
        try:
            opts.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"--log-dir {opts.log_dir}: {exc.strerror}", ExitCode.BAD_INPUT)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    sink = LogSink(sys.stderr.buffer)

    def announce(lines: list[str]) -> None:
        for line in lines:
            typer.echo(line)
        sys.stdout.flush()
        sink.event("platform ready: every component started", roles=list(roles) or "all")

    try:
        with _StackProgress() as progress:
            code = run_up(settings, opts, stop, sink, announce, progress=progress.step)
    except UnknownRole as exc:
        fail(f"{'--only' if only is not None else 'PERSONALIZATION_PLATFORM_ROLES'}: {exc}", ExitCode.BAD_INPUT)
    except PortInUse as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except AlreadyRunning as exc:
        fail(str(exc), ExitCode.REFUSED)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    except OSError as exc:
        fail(f"cannot start the platform: {exc}", ExitCode.FAILED)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(code)


class _StackProgress:
    """Rich progress of the embedded stack's start on a terminal; closed once the stack is ready.

    It must be gone before the children start: their log lines share stderr with it.
    """

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal)
        self._task: TaskID | None = None

    def step(self, description: str, done: int, total: int) -> None:
        """The stack's step callback: ``(description, steps done, steps in all)``."""
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("embedded stack", total=total)
        self._progress.update(self._task, description=f"embedded stack: {description}", completed=done, total=total)
        if done >= total:
            self._progress.stop()

    def __enter__(self) -> _StackProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


def status(
    json_out: bool = typer.Option(False, "--json", help="Print the status as one JSON object."),
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Each component of the running platform: state, pid, restarts and live lag."""
    from personalization.platform.status import NoPlatform, healthy, platform_status

    settings = _settings(data_dir)
    try:
        report = platform_status(settings.platform.state_dir.resolve(), settings)
    except NoPlatform as exc:
        fail(str(exc), ExitCode.UNAVAILABLE)
    if json_out:
        typer.echo(orjson.dumps(report).decode())
    else:
        _print_table(report)
    raise typer.Exit(ExitCode.OK if healthy(report) else ExitCode.FAILED)


def _lag_text(lag: dict[str, object]) -> str:
    if "error" in lag:
        return f"error: {lag['error']}"
    return ", ".join(f"{k}={v}" for k, v in lag.items() if k not in ("topic", "topics"))


def _print_table(report: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    sup = report["supervisor"]
    assert isinstance(sup, dict)
    table = Table("component", "state", "pid", "restarts", "url", "lag",
                  title=f"supervisor {sup['pid'] or '-'}: {sup['state']}")
    components = report["components"]
    assert isinstance(components, list)
    for c in components:
        colour = {"up": "green", "backoff": "yellow", "starting": "yellow"}.get(c["state"], "red")
        table.add_row(c["name"], f"[{colour}]{c['state']}[/]", str(c["pid"] or "-"), str(c["restarts"]),
                      c.get("url") or "", _lag_text(c["lag"]))
    Console().print(table)
    for c in components:
        if c.get("last_output"):
            err.print(f"{c['name']} (exit {c.get('last_exit_code')}) last output:", highlight=False)
            for line in c["last_output"][-5:]:
                err.print(f"  {line}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``up`` and ``status`` to the root command."""
    app.command("up")(up)
    app.command("status")(status)
