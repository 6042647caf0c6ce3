"""``personalization workers run erasures|invalidations``: one outbox worker as its own process.

Every API process runs both workers already (``PERSONALIZATION_BACKGROUND_WORKERS``); this
command runs one of them as a component (a supervisor's, or where no API process runs).
Any number may run side by side: rows are claimed with ``FOR UPDATE SKIP LOCKED``.
``--once`` runs one pass and prints what it did as one JSON line.  Runs until SIGINT or
SIGTERM.  Exit codes as every command: 0 stopped cleanly, 2 an unknown worker, 4 PostgreSQL
unreachable at start.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import asdict
from typing import Annotated, Any, Literal, assert_never

import orjson
import typer

from personalization.cli.common import err, exit_code_for, fail, load_settings
from personalization.config import Settings
from personalization.errors import PersonalizationError

app = typer.Typer(no_args_is_help=True, help="Run the outbox workers (erase completion, invalidation replay).")

Kind = Literal["erasures", "invalidations"]


async def _once(settings: Settings, kind: Kind) -> dict[str, Any]:
    from personalization.composition import open_platform
    from personalization.workers import erasure_worker, invalidation_replayer

    async with open_platform(settings) as p:
        match kind:
            case "erasures":
                worker = erasure_worker(p)
                try:
                    return {"worker": kind, **asdict(await worker.run_once())}
                finally:
                    if worker.tombstones is not None:
                        await asyncio.to_thread(worker.tombstones.close)
            case "invalidations":
                return {"worker": kind, "replayed": await invalidation_replayer(p).replay_once()}
            case _:
                assert_never(kind)


async def _forever(settings: Settings, kind: Kind) -> None:
    from personalization.composition import open_platform
    from personalization.workers import background_workers

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_platform(settings) as p, background_workers(p, (kind,)):
        err.print(f"worker {kind} running (SIGINT or SIGTERM stops it)", highlight=False, markup=False)
        await stop.wait()


@app.command("run")
def run(
    kind: Annotated[Kind, typer.Argument(help="erasures | invalidations")],
    once: Annotated[bool, typer.Option("--once", help="one pass, then print what it did (one JSON line)")] = False,
) -> None:
    """Run one worker until stopped (or one pass with --once)."""
    from personalization import logging_setup

    logging_setup.configure()
    settings = load_settings()
    try:
        if once:
            typer.echo(orjson.dumps(asyncio.run(_once(settings, kind))).decode())
        else:
            asyncio.run(_forever(settings, kind))
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
