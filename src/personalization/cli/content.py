"""``personalization content ...``: the content catalogue's embeddings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from personalization.config import get_settings
from personalization.errors import InvalidInput, PersonalizationError

app = typer.Typer(no_args_is_help=True, help="Content embeddings used by reranking.")
_err = Console(stderr=True)


def _fail(msg: str) -> None:
    _err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


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
    """Validate the whole file, then upsert every embedding in one transaction (a bad file writes nothing)."""
    from personalization.cache.client import make_client
    from personalization.cache.serving import ServingCache
    from personalization.serving.content_import import import_batch, read_file
    from personalization.serving.settings import ServingSettings
    from personalization.store.db import Database

    settings = get_settings()
    dim = ServingSettings().embedding_dim
    try:
        batch = read_file(path, dim, fmt, ids)
    except InvalidInput as exc:
        _fail(f"{path}: {'; '.join(e.msg for e in exc.errors)}")
        return

    async def run() -> tuple[int, bool]:
        db = Database(settings, min_size=1, max_size=1)
        await db.open()
        redis = make_client(settings)
        try:
            return await import_batch(db, ServingCache(redis), batch, model)
        finally:
            await redis.aclose()
            await db.close()

    try:
        written, announced = asyncio.run(run())
    except PersonalizationError as exc:
        _fail(str(exc))
        return
    if not announced:
        _err.print(
            "[yellow]warning:[/] Redis unreachable: serving processes see the new vectors when their cache ages out"
        )
    if json_out:
        typer.echo(orjson.dumps({"imported": written, "dim": dim, "path": str(path), "announced": announced}).decode())
    else:
        typer.echo(f"imported {written} embeddings (dim {dim}) from {path}")
