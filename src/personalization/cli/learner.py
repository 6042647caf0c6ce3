"""``personalization learner ...``: the online learner (run) and its rebuild (recompute).

Exit codes (:mod:`personalization.cli.common`): 0 success, 1 the work failed, 2 bad input
or configuration (one-line message, nothing written), 4 PostgreSQL or Redis unavailable.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import uuid
from types import FrameType
from typing import Annotated

import typer

from personalization.cli.common import ExitCode, exit_code_for, fail, load_settings
from personalization.config import Settings

app = typer.Typer(
    help="Online learner: time-decayed user scores and embeddings from the CDC stream.", no_args_is_help=True
)


def _settings(**learner: object) -> Settings:
    return load_settings(learner=learner)


@app.command()
def run(
    metrics_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Prometheus port (0 disables; default 9466).")
    ] = None,
    group_id: Annotated[str | None, typer.Option(help="Learner group (owner of the stored offsets).")] = None,
) -> None:
    """Consume the personalization_events CDC topic and keep user state until SIGTERM/SIGINT."""
    from personalization.learner.consumer import Learner, LearnerConfigError

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)-5s [%(name)s] %(message)s"
    )
    settings = _settings(metrics_port=metrics_port, group_id=group_id)
    if settings.learner.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.learner.metrics_port, addr=settings.learner.metrics_host)
        except OSError as exc:
            fail(f"metrics port {settings.learner.metrics_port}: {exc.strerror}", ExitCode.BAD_INPUT)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = Learner(settings, stop=stop).run()
    except LearnerConfigError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(code)


@app.command()
def recompute(
    user: Annotated[list[str] | None, typer.Option("--user", help="User id (repeatable).")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="Every user with a profile.")] = False,
) -> None:
    """Rebuild user state from personalization_events alone (safe while `learner run` is running)."""
    from personalization.errors import NotFound, PersonalizationError
    from personalization.learner.recompute import recompute_users

    if bool(user) == all_users:
        fail("give --user ID (repeatable) or --all", ExitCode.BAD_INPUT)
    ids: list[uuid.UUID] | None = None
    if user:
        ids = []
        for text in user:
            try:
                ids.append(uuid.UUID(text))
            except ValueError:
                fail(f"--user: not a UUID: {text!r}", ExitCode.BAD_INPUT)
    settings = _settings()
    try:
        report = recompute_users(settings, ids)
    except NotFound as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    typer.echo(json.dumps(report.as_dict()))


if __name__ == "__main__":  # `python -m personalization.cli.learner` (used by tests and the benchmark)
    app()
