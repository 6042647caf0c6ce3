"""``personalization stack up|down``: the embedded local stack in the foreground.

Registered by the main CLI as ``personalization stack``; also runnable on its own
as ``python -m personalization_dev.cli.stack``.  Exit codes (:mod:`personalization.cli.common`):
0 success, 1 the stack failed to start or stop (the message names the fix), 2 bad usage.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from personalization.cli.common import ExitCode, err, fail
from personalization.config import SERVICE_URL_VARS, Settings, configured_service_urls
from personalization.errors import PersonalizationError
from personalization_dev.stack import (
    DEFAULT_ROOT,
    LocalStack,
    StackConfig,
    StackError,
    StepCallback,
    stop_running_stack,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run PostgreSQL, Redis and a Kafka-compatible broker locally, from pip packages.",
)

ROOT_OPTION = typer.Option(
    DEFAULT_ROOT,
    "--root",
    envvar="PERSONALIZATION_STACK_DIR",
    help="Directory for the stack's data, logs and state.",
)


class _StopRequested(Exception):
    """SIGTERM or SIGHUP arrived (``stack down``, or the terminal went away)."""


def _log_to_file(root: Path, verbose: bool) -> None:
    # The terminal shows the progress bars; the structured lines go to a file so
    # they neither garble the bars nor get lost (and to stderr too with --verbose).
    from personalization.logging_setup import JsonFormatter

    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(log_dir / "stack.log")]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    logger = logging.getLogger("personalization_dev.stack")
    for h in handlers:
        h.setFormatter(JsonFormatter())
        logger.addHandler(h)
        _handlers.append(h)
    logger.setLevel(logging.INFO)


_handlers: list[logging.Handler] = []


def _close_log_handlers() -> None:
    logger = logging.getLogger("personalization_dev.stack")
    while _handlers:
        h = _handlers.pop()
        logger.removeHandler(h)
        h.close()


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
    )


def _step_callback(progress: Progress, title: str) -> StepCallback:
    task = progress.add_task(title, total=None)

    def report(description: str, done: int, total: int) -> None:
        progress.update(task, description=description, completed=done, total=total)

    return report


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _StopRequested(signal.Signals(signum).name)


# Long on purpose (~105 lines): a foreground command's whole lifetime (options, progress, signal
# handling, exports, wait, ordered stop) reads best top to bottom in one place.
@app.command("up")
def up(
    root: Path = ROOT_OPTION,
    pg_port: int = typer.Option(
        0,
        "--pg-port",
        envvar="PERSONALIZATION_STACK_PG_PORT",
        min=0,
        max=65535,
        help="PostgreSQL port (0: a free one).",
    ),
    redis_port: int = typer.Option(
        0,
        "--redis-port",
        envvar="PERSONALIZATION_STACK_REDIS_PORT",
        min=0,
        max=65535,
        help="Redis port (0: a free one).",
    ),
    kafka_port: int = typer.Option(
        0,
        "--kafka-port",
        envvar="PERSONALIZATION_STACK_KAFKA_PORT",
        min=0,
        max=65535,
        help="Kafka broker port (0: a free one).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also log to stderr."),
) -> None:
    """Start the local stack in the foreground; Ctrl-C or `stack down` stops it.

    Does nothing when a PERSONALIZATION_* service URL is set: configured services
    always win over the local stack.
    """
    if configured_service_urls():
        names = ", ".join(v for v in SERVICE_URL_VARS if os.environ.get(v))
        err.print(
            f"Service URLs are configured ({names}), so no local stack is started: the "
            "commands use those services. Unset them to run the local stack.",
            soft_wrap=True,
        )
        return
    try:
        _log_to_file(root, verbose)
    except OSError as exc:
        fail(f"cannot write to the stack directory {root}: {exc}", ExitCode.FAILED)
    stack = LocalStack(StackConfig(root=root, pg_port=pg_port, redis_port=redis_port, kafka_port=kafka_port))
    # `stack down` sends SIGTERM; a closed terminal sends SIGHUP.  Both must run the
    # same orderly shutdown as Ctrl-C, even in the middle of start().
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    code = ExitCode.OK
    try:
        try:
            with _progress() as progress:
                urls = stack.start(_step_callback(progress, "Starting the local stack"))
        except (PersonalizationError, OSError) as exc:
            # StackError and the store's errors (a failed migration) carry their fix;
            # an OSError (permissions, a read-only disk) names the path involved.
            fail(str(exc), ExitCode.FAILED)
        for notice in stack.notices:
            err.print(f"Note: {escape(notice)}", soft_wrap=True)
        err.print(
            f"Local stack running (data in {escape(str(stack.root))}; the Kafka broker keeps its topics "
            "in memory only). Point other shells at it with:",
            soft_wrap=True,
        )
        for line in urls.export_lines():
            typer.echo(line)
        # The embedding dimension this shell is configured with, so the shells pointed at
        # the stack (API, learner, demo, content import) agree on it with this one.
        typer.echo(f"export PERSONALIZATION_EMBEDDING_DIM={Settings().embedding.dim}")
        sys.stdout.flush()
        err.print("Ctrl-C here or `personalization stack down` stops it.")
        while True:
            time.sleep(0.5)
            dead = stack.failed()
            if dead:
                for name, why in dead.items():
                    err.print(
                        f"[bold red]error:[/] {name} exited unexpectedly: {escape(why)}",
                        highlight=False,
                        soft_wrap=True,
                    )
                err.print(f"Stopping the rest; logs are in {escape(str(stack.root / 'logs'))}.")
                code = ExitCode.FAILED
                break
    except (KeyboardInterrupt, _StopRequested):
        err.print("Stopping the local stack...")
    finally:
        # A second Ctrl-C must not cut PostgreSQL's shutdown short; kill -9 still
        # works and the parent-death signal still stops every server cleanly.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            if stack.active:  # a failed start has already stopped what it started
                with _progress() as progress:
                    stack.stop(_step_callback(progress, "Stopping the local stack"))
        finally:
            # Children inherit ignored signals: leave none ignored for whatever this
            # process starts next (it matters when `up` runs in-process, e.g. in tests).
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            _close_log_handlers()
    if code:
        raise typer.Exit(code)
    err.print("Local stack stopped.")


@app.command("down")
def down(
    root: Path = ROOT_OPTION,
    timeout: float = typer.Option(90.0, "--timeout", min=1.0, help="Seconds to wait."),
) -> None:
    """Stop the local stack that `stack up` runs from --root (in another shell)."""
    try:
        with err.status(f"Stopping the local stack in {escape(str(root))}..."):
            state = stop_running_stack(root, timeout_s=timeout)
    except StackError as exc:
        fail(str(exc), ExitCode.FAILED)
    if state is None:
        err.print(f"No local stack is running from {escape(str(root))}.")
    else:
        err.print(f"Stopped the local stack (pid {state.pid}).")


def register(root: typer.Typer) -> None:
    """Entry point of the ``personalization.cli`` plugin group: adds ``stack``."""
    root.add_typer(app, name="stack")


if __name__ == "__main__":
    app()
