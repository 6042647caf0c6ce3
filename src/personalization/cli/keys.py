"""``personalization keys create|list|revoke``: API keys of the HTTP API.

The key is printed once, on creation; only its hash is stored.  Exit codes
(:mod:`personalization.cli.common`): 0 success, 2 bad input or an unknown key (one-line
message on stderr, nothing written), 3 a live key with that name already exists, 4
PostgreSQL unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from personalization.cli.common import ExitCode, err, exit_code_for, fail, load_settings
from personalization.config import Settings
from personalization.errors import InvalidInput, PersonalizationError, StoreUnavailable
from personalization.security import audit
from personalization.security.keys import SCOPES, KeyInfo, KeyStore, validate_key_id
from personalization.store.db import Database

app = typer.Typer(no_args_is_help=True, help=f"API keys (scopes: {', '.join(SCOPES)}).")
T = TypeVar("T")


def _run(settings: Settings, body: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        db = Database(settings, min_size=1, max_size=2)
        await db.open()
        try:
            return await body(db)
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except InvalidInput as exc:  # bad input (2), or a duplicate live name (status 409: 3)
        fail("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in exc.errors), exit_code_for(exc))
    except StoreUnavailable as exc:
        fail(f"PostgreSQL unavailable: {exc}", ExitCode.UNAVAILABLE)
    except PersonalizationError as exc:  # NotFound (an unknown key id) is bad input: 2
        fail(str(exc), exit_code_for(exc))


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="label of the key (unique among live keys)")],
    scopes: Annotated[str, typer.Option("--scopes", help=f"comma-separated: {','.join(SCOPES)}")],
    json_out: Annotated[bool, typer.Option("--json", help='print {"key": ..., ...} as one JSON line')] = False,
) -> None:
    """Create a key and print it (shown once)."""
    settings = load_settings()
    actor = audit.cli_actor()

    async def body(db: Database) -> tuple[str, KeyInfo]:
        store = KeyStore(db, settings)
        key, info = await store.create(name, scopes.split(","), actor)
        await audit.record(db, actor=actor, action="key.create", target=info.key_id,
                           details={"name": info.name, "scopes": list(info.scopes)})
        return key, info

    key, info = _run(settings, body)
    if json_out:
        typer.echo(orjson.dumps({"key": key, **info.as_dict()}).decode())
        return
    typer.echo(key)
    err.print(f"key {info.key_id} ({info.name}; scopes {', '.join(info.scopes)}): store it now, it is not shown again")


@app.command("list")
def list_keys(
    include_revoked: Annotated[bool, typer.Option("--all", help="include revoked keys")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False,
) -> None:
    """Every key's id, name, scopes, created and last-used time (never the key)."""
    settings = load_settings()
    rows = _run(settings, lambda db: KeyStore(db, settings).list(include_revoked))
    if json_out:
        typer.echo(orjson.dumps([r.as_dict() for r in rows]).decode())
        return
    table = Table("key_id", "name", "scopes", "created", "last used", "revoked")
    for r in rows:
        table.add_row(r.key_id, r.name, ",".join(r.scopes), f"{r.created_at:%Y-%m-%d %H:%M}",
                      f"{r.last_used_at:%Y-%m-%d %H:%M}" if r.last_used_at else "-",
                      f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "-")
    Console().print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (16 hex digits, as in `keys list`)")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False,
) -> None:
    """Revoke a key; API processes refuse it within PERSONALIZATION_AUTH_REVALIDATE_S seconds."""
    settings = load_settings()
    actor = audit.cli_actor()

    async def body(db: Database) -> KeyInfo:
        validate_key_id(key_id)
        info = await KeyStore(db, settings).revoke(key_id)
        await audit.record(db, actor=actor, action="key.revoke", target=info.key_id, details={"name": info.name})
        return info

    info = _run(settings, body)
    if json_out:
        typer.echo(orjson.dumps(info.as_dict()).decode())
    else:
        typer.echo(f"revoked {info.key_id} ({info.name})")
