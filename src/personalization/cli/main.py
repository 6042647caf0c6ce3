"""The ``personalization`` command line (Typer).  Entry points stay thin.

Every command exits with the codes of :class:`personalization.cli.common.ExitCode` and
reports an error as one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import sys

import typer

from personalization.cli.common import exit_code_for, fail, load_settings
from personalization.errors import PersonalizationError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Personalization signal platform.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (idempotent); creates the database if missing."""
    from personalization.store import migrate

    settings = load_settings()
    try:
        applied = migrate.upgrade(settings.database.url)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    if applied:
        typer.echo(f"applied: {', '.join(applied)}")
    else:
        typer.echo("schema is up to date")


@db_app.command("sql")
def db_sql() -> None:
    """Print the migrations' SQL without connecting."""
    from personalization.store import migrate

    sys.stdout.write(migrate.render_sql())


@app.command("serve")
def serve(
    host: str = typer.Option(None, help="bind address (default PERSONALIZATION_HTTP_HOST)"),
    port: int = typer.Option(None, min=1, max=65535, help="port (default PERSONALIZATION_HTTP_PORT)"),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes"),
) -> None:
    """Run the HTTP API (OpenAPI at /docs)."""
    import uvicorn

    from personalization import logging_setup
    from personalization.store import migrate

    settings = load_settings()
    logging_setup.configure()
    try:
        migrate.upgrade(settings.database.url)
    except PersonalizationError as exc:
        fail(str(exc), exit_code_for(exc))
    uvicorn.run(
        # Several workers are processes of uvicorn's own: their factory arms the parent-death
        # signal, so a killed server (or supervisor above it) leaves no worker behind.
        "personalization.api.app:create_app" if workers == 1 else "personalization.api.worker:create_worker_app",
        factory=True,
        host=host or settings.http.host,
        port=port or settings.http.port,
        workers=workers,
        log_config=None,
        access_log=False,
    )


def _register_optional() -> None:
    # Sub-apps of other packages; each is optional so a partial install still runs.
    import importlib

    for module, name in (
        ("personalization.cli.cdc", "cdc"),
        ("personalization.cli.learner", "learner"),
        ("personalization.cli.jobs", "jobs"),
        ("personalization.cli.keys", "keys"),
        ("personalization.cli.users", "users"),
        ("personalization.cli.content", "content"),
        ("personalization.cli.workers", "workers"),
        ("personalization.cli.experiments", "experiments"),
        ("personalization.cli.eval", "eval"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("personalization.cli"):
                continue
            raise
        app.add_typer(mod.app, name=name)
        # A module may bring further top-level sub-apps (cli.jobs also has `features`).
        for extra_name, extra_app in getattr(mod, "EXTRA_APPS", {}).items():
            app.add_typer(extra_app, name=extra_name)


PLUGIN_GROUP = "personalization.cli"


def _register_plugins() -> None:
    # Commands of other installed distributions (the development tooling's `stack`, `demo`
    # and `bench`) arrive through entry points, so the product never imports them: each
    # entry point names a ``register(app)`` function.
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        ep.load()(app)


def _register_commands() -> None:
    # Top-level commands defined in their own modules: `up` and `status` (the supervisor).
    from personalization.cli import up

    up.register(app)


_register_commands()
_register_optional()
_register_plugins()
