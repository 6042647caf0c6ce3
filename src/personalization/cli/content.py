"""``personalization content ...``: the content catalogue and its embeddings.

Exit codes (:mod:`personalization.cli.common`): 0 success, 1 the import failed, 2 a file
that cannot be read or is invalid (nothing written), 4 PostgreSQL unreachable.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from personalization.cli.common import ExitCode, err, exit_code_for, fail, load_settings
from personalization.errors import InvalidInput, PersonalizationError

if TYPE_CHECKING:
    from personalization.store.serving import ImportOutcome

app = typer.Typer(
    no_args_is_help=True, help="The content catalogue (passages, translations, series) and its embeddings."
)


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="a .jsonl, .parquet or .npy file")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl | parquet | npy (default: from the extension)")
    ] = None,
    ids: Annotated[Path | None, typer.Option(help="for .npy: text file of content ids, one per line")] = None,
    model: Annotated[str, typer.Option(help="model name stored with rows that do not name one")] = "default",
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False,
) -> None:
    """Validate the whole file, then upsert its embeddings and catalogue rows in one transaction.

    Rows carry content_id and an embedding, catalogue fields (content_type, title, body,
    passage_id, translation, series, position, tags, metadata) or both.  A bad file
    writes nothing; a good one raises the catalogue version.
    """
    from personalization.cache.client import make_client
    from personalization.cache.serving import ServingCache
    from personalization.serving.content_import import import_batch, read_file
    from personalization.store.db import Database

    settings = load_settings()
    dim = settings.embedding.dim
    try:
        batch = read_file(path, dim, fmt, ids)
    except InvalidInput as exc:
        fail(f"{path}: {'; '.join(e.msg for e in exc.errors)}", ExitCode.BAD_INPUT)
    except OSError as exc:  # exists but cannot be read (permissions, a directory, an I/O error)
        fail(f"{path}: cannot read: {exc.strerror or exc}", ExitCode.BAD_INPUT)

    async def run() -> tuple[ImportOutcome, bool]:
        db = Database(settings, min_size=1, max_size=1)
        await db.open()
        redis = make_client(settings)
        try:
            return await import_batch(db, ServingCache(redis), batch, model)
        finally:
            await redis.aclose()
            await db.close()

    try:
        outcome, announced = asyncio.run(run())
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    if not announced:
        err.print(
            "[yellow]warning:[/] Redis unreachable: serving processes see the new content when their cache ages out"
        )
    if json_out:
        typer.echo(orjson.dumps({
            "imported": outcome.rows, "embeddings": outcome.embeddings, "catalog_rows": outcome.catalog_rows,
            "dim": dim, "catalog_version": outcome.catalog_version, "path": str(path), "announced": announced,
        }).decode())
    else:
        typer.echo(
            f"imported {outcome.rows} items ({outcome.embeddings} embeddings of dim {dim},"
            f" {outcome.catalog_rows} catalogue rows) from {path}; catalogue version {outcome.catalog_version}"
        )
