"""``personalization users erase|export``: data rights of one user.

``erase`` removes the user everywhere (PostgreSQL and Redis at once; the rollups refresh
and the Kafka tombstones through the erase outbox) and records it in the audit log; it asks
for confirmation unless ``--yes`` and is idempotent.  ``erasure`` shows one erasure's parts.
``export`` writes everything held about the user as one JSON document.  Exit codes
(:mod:`personalization.cli.common`): 0 success, 1 the work failed, 2 bad input, an unknown
user or no confirmation (nothing written), 3 the erase is recorded but parts are pending (a
worker completes them), 4 a service unreachable.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from personalization.cli.common import ExitCode, err, exit_code_for, fail, load_settings
from personalization.errors import CacheUnavailable, NotFound, PersonalizationError, StoreUnavailable

app = typer.Typer(no_args_is_help=True, help="Erase or export one user (audited).")


def _user_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        fail("user_id: not a UUID", ExitCode.BAD_INPUT)


_WAIT_HELP = "wait this long for the pending parts (rollups, Kafka tombstones), running them here; 0: leave them"


@app.command("erase")
def erase(
    user_id: Annotated[str, typer.Argument(help="the user's UUID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="erase without asking for confirmation")] = False,
    wait_s: Annotated[float, typer.Option("--wait-s", min=0, help=_WAIT_HELP)] = 60.0,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as one JSON line")] = False,
) -> None:
    """Erase the user everywhere (idempotent, asks first unless --yes) and print what was removed.

    PostgreSQL and Redis are erased at once; the rollups refresh and the Kafka tombstones
    are completed here (up to --wait-s) or by any API process's erasure worker, or by
    ``personalization workers run erasures``.  Exit 0 when complete, 3 when parts are
    still pending (a worker completes them; ``users erasure ID`` shows them).
    """
    from personalization.composition import open_platform
    from personalization.datarights.erase import Eraser
    from personalization.datarights.status import erasure_status
    from personalization.security import audit
    from personalization.workers import erasure_worker

    uid = _user_id(user_id)
    settings = load_settings()
    if not yes:
        try:
            confirmed = typer.confirm(f"Erase user {uid} everywhere? This cannot be undone", err=True)
        except typer.Abort:  # no answer (end of input) or Ctrl-C
            confirmed = False
        if not confirmed:
            fail("not confirmed (pass --yes to erase without asking); nothing erased", ExitCode.BAD_INPUT)

    async def main() -> tuple[dict[str, Any], dict[str, Any] | None]:
        async with open_platform(settings) as p:
            report = (await Eraser(p.db, p.redis, settings).erase(uid, audit.cli_actor())).as_dict()
            if report["pending"] and wait_s > 0:
                await _complete_here(erasure_worker(p), p.db, uuid.UUID(str(report["erasure_id"])), wait_s)
            status = await erasure_status(p.db, uuid.UUID(str(report["erasure_id"])))
            return report, status

    try:
        report, status = asyncio.run(main())
    except (StoreUnavailable, CacheUnavailable) as exc:
        fail(f"service unavailable, nothing erased: {exc}", ExitCode.UNAVAILABLE)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    if status is not None:
        report["pending"] = status["pending"]
        report["parts"] = {k: v["state"] for k, v in status["parts"].items()}
        report["outcome"] = "pending" if status["pending"] else "ok"
        report["erased"] = not status["pending"]
    if json_out:
        typer.echo(orjson.dumps(report).decode())
    else:
        removed = report["removed"]
        parts = ", ".join(f"{k}={v}" for k, v in removed.items() if v)
        typer.echo(f"erased: {parts or 'nothing left in PostgreSQL'}; redis keys={report['redis_keys']}; "
                   f"parts: {', '.join(f'{k}={v}' for k, v in report['parts'].items())}; "
                   f"erasure {report['erasure_id']}")
    if report["pending"]:
        err.print(f"pending: {', '.join(report['pending'])}: any API process (or `personalization workers run "
                  f"erasures`) completes them; `personalization users erasure {report['erasure_id']}` shows them",
                  highlight=False, markup=False)
        raise typer.Exit(int(ExitCode.REFUSED))


async def _complete_here(worker: Any, db: Any, erasure_id: uuid.UUID, wait_s: float) -> None:
    # The erasure worker's passes in this process until this erasure is complete or time is up.
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from personalization.datarights.status import erasure_status

    deadline = time.monotonic() + wait_s
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("completing the erasure", total=None)
        try:
            while time.monotonic() < deadline:
                await worker.run_once()
                status = await erasure_status(db, erasure_id)
                if status is None or status["complete"]:
                    return
                progress.update(task, description=f"completing the erasure: pending {', '.join(status['pending'])}")
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        finally:
            if worker.tombstones is not None:
                await asyncio.to_thread(worker.tombstones.close)


@app.command("erasure")
def erasure(
    erasure_id: Annotated[str, typer.Argument(help="the erasure id an erase printed")],
) -> None:
    """Show one erasure: complete or not, and each part's state (one JSON line)."""
    from personalization.datarights.status import erasure_status
    from personalization.store.db import Database

    try:
        eid = uuid.UUID(erasure_id)
    except ValueError:
        fail("erasure_id: not a UUID", ExitCode.BAD_INPUT)
    settings = load_settings()

    async def main() -> dict[str, Any] | None:
        db = Database(settings, min_size=1, max_size=1)
        await db.open()
        try:
            return await erasure_status(db, eid)
        finally:
            await db.close()

    try:
        status = asyncio.run(main())
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    if status is None:
        fail("erasure_id: erasure not found", ExitCode.BAD_INPUT)
    typer.echo(orjson.dumps(status).decode())


@app.command("export")
def export(
    user_id: Annotated[str, typer.Argument(help="the user's UUID")],
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: stdout)")] = None,
) -> None:
    """Write everything held about the user as one JSON document."""
    from personalization.composition import open_platform
    from personalization.datarights.export import Exporter
    from personalization.security import audit

    uid = _user_id(user_id)
    settings = load_settings()

    async def main() -> None:
        async with open_platform(settings) as p:
            exporter = Exporter(p.db, p.redis, p.settings.decay.config())
            await exporter.check(uid)
            sink = out.open("wb") if out else sys.stdout.buffer
            try:
                async for chunk in exporter.stream(uid, audit.cli_actor()):
                    sink.write(chunk)
                if not out:
                    sink.write(b"\n")
            finally:
                if out:
                    sink.close()
                else:
                    sink.flush()

    try:
        asyncio.run(main())
    except NotFound:
        fail("user_id: user not found", ExitCode.BAD_INPUT)
    except (StoreUnavailable, CacheUnavailable) as exc:
        fail(f"service unavailable: {exc}", ExitCode.UNAVAILABLE)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
