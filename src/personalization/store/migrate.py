"""Schema migrations: versioned SQL files applied in order and recorded by yoyo.

The files live in ``store/migrations/`` (``NNNN_name.sql``); yoyo records each
applied migration in ``_yoyo_migration`` and takes a lock so concurrent upgrades
serialise.  ``upgrade`` creates the database first when it does not exist.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

from personalization.errors import StoreUnavailable
from personalization.store.urls import dbname_of, with_dbname

MIGRATIONS_DIR = Path(str(resources.files("personalization.store") / "migrations"))


def migration_files() -> list[Path]:
    """The migration files in the order they are applied (yoyo orders by file name)."""
    return sorted(p for p in MIGRATIONS_DIR.glob("*.sql") if not p.name.endswith(".rollback.sql"))


def render_sql() -> str:
    """All migrations as one SQL script, for ``personalization db sql`` (no connection)."""
    parts = []
    for path in migration_files():
        parts.append(f"-- migration: {path.stem}\n{path.read_text().strip()}\n")
    return "\n".join(parts)


def _yoyo_url(database_url: str) -> str:
    # yoyo picks the psycopg 3 backend from the URL scheme.
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    if database_url.startswith("postgresql+psycopg://"):
        return database_url
    raise ValueError(f"unsupported database URL scheme: {database_url.split(':', 1)[0]}")


def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL if it is missing; True if it was created."""
    dbname = dbname_of(database_url)
    admin = with_dbname(database_url, "postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if exists:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg.errors.DuplicateDatabase:
                return False
            return True
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot reach PostgreSQL: {exc}".strip()) from exc


def pending(database_url: str) -> list[str]:
    """Ids of the migrations not yet applied."""
    backend = get_backend(_yoyo_url(database_url))
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))]
    finally:
        backend.connection.close()


def upgrade(database_url: str, *, create_database: bool = True) -> list[str]:
    """Apply every pending migration (idempotent); returns the ids applied now."""
    if create_database:
        ensure_database(database_url)
    try:
        backend = get_backend(_yoyo_url(database_url))
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot reach PostgreSQL: {exc}".strip()) from exc
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        backend.connection.close()
