"""``personalization users erase|export``: data rights of one user.

``erase`` removes the user everywhere (PostgreSQL, Redis, a Kafka tombstone, rollups) and
records it in the audit log; it is idempotent.  ``export`` writes everything held about
the user as one JSON document.  Exit codes (:mod:`personalization.cli.common`): 0 success,
1 the work failed, 2 bad input or an unknown user (nothing written), 3 erase incomplete
(run it again), 4 a service unreachable.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Annotated

import orjson
import typer

from personalization.cli.common import ExitCode, exit_code_for, fail, load_settings
from personalization.errors import CacheUnavailable, NotFound, PersonalizationError, StoreUnavailable

app = typer.Typer(no_args_is_help=True, help="Erase or export one user (audited).")


def _user_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        fail("user_id: not a UUID", ExitCode.BAD_INPUT)


@app.command("erase")
def erase(
    user_id: Annotated[str, typer.Argument(help="the user's UUID")],
    json_out: Annotated[bool, typer.Option("--json", help="print the report as one JSON line")] = False,
) -> None:
    """Erase the user everywhere (idempotent) and print what was removed."""
    from personalization.composition import open_platform
    from personalization.datarights.erase import EraseIncomplete, Eraser
    from personalization.security import audit

    uid = _user_id(user_id)
    settings = load_settings()

    async def main() -> dict[str, object]:
        async with open_platform(settings) as p:
            eraser = Eraser(p.db, p.redis, settings)
            try:
                return (await eraser.erase(uid, audit.cli_actor())).as_dict()
            finally:
                if eraser.tombstones is not None:
                    eraser.tombstones.close()

    try:
        report = asyncio.run(main())
    except EraseIncomplete as exc:
        typer.echo(orjson.dumps(exc.report.as_dict()).decode())
        fail(f"{exc}; run the erase again", ExitCode.REFUSED)
    except (StoreUnavailable, CacheUnavailable) as exc:
        fail(f"service unavailable, nothing erased: {exc}", ExitCode.UNAVAILABLE)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    if json_out:
        typer.echo(orjson.dumps(report).decode())
    else:
        removed = report["removed"]
        assert isinstance(removed, dict)
        parts = ", ".join(f"{k}={v}" for k, v in removed.items() if v)
        typer.echo(f"erased: {parts or 'nothing left in PostgreSQL'}; redis keys={report['redis_keys']}, "
                   f"kafka tombstones={report['kafka_tombstones']}, rollups refreshed={report['rollups_refreshed']}")


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
