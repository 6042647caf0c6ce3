"""PostgreSQL access: the async connection pool and the driver-error boundary.

``wrap_exceptions`` turns psycopg errors into the library's own, so use cases
never import psycopg.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from personalization.config import Settings
from personalization.errors import Conflict, StoreError, StoreUnavailable


@contextlib.contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Translate driver errors raised inside the block into library errors."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(str(exc.diag.message_primary or exc)) from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        raise Conflict(str(exc.diag.message_primary or exc)) from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc
    except psycopg.errors.QueryCanceled as exc:
        raise StoreUnavailable(f"statement timed out: {exc}") from exc
    except psycopg.Error as exc:
        raise StoreError(str(exc.diag.message_primary or exc) if hasattr(exc, "diag") else str(exc)) from exc


class Database:
    """An async connection pool with the project's session settings."""

    def __init__(self, settings: Settings, *, min_size: int | None = None, max_size: int | None = None) -> None:
        self.settings = settings
        self.pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            settings.database.url,
            min_size=min_size if min_size is not None else settings.database.pool_min,
            max_size=max_size if max_size is not None else settings.database.pool_max,
            timeout=settings.database.connect_timeout_s,
            kwargs={
                "connect_timeout": max(1, int(settings.database.connect_timeout_s)),
                "options": f"-c statement_timeout={settings.database.statement_timeout_ms}",
                "application_name": "personalization",
            },
            open=False,
            name="personalization",
        )

    async def open(self) -> None:
        """Open the pool; fails fast with StoreUnavailable when PostgreSQL is unreachable."""
        timeout = self.settings.database.connect_timeout_s
        deadline = time.monotonic() + timeout
        with wrap_exceptions():
            # Direct attempts first, quietly, until the timeout: with PostgreSQL down the caller
            # gets one error, where the pool would log a warning for every retry (a CLI command
            # would print them all before its one error line).
            while True:
                try:
                    probe = await AsyncConnection.connect(
                        self.settings.database.url, connect_timeout=max(1, int(timeout)),
                        application_name="personalization",
                    )
                    break
                except psycopg.OperationalError:
                    if time.monotonic() + 0.25 >= deadline:
                        raise
                    await asyncio.sleep(0.25)
            await probe.close()
            await self.pool.open(wait=True, timeout=timeout)

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; the block runs in a transaction committed on exit."""
        with wrap_exceptions():
            async with self.pool.connection() as conn:
                yield conn

    async def fetch_one(self, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Run one statement in its own transaction and return its first row."""
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                await cur.execute(query, params)
                return await cur.fetchone()

    async def fetch_all(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one statement in its own transaction and return all rows."""
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                await cur.execute(query, params)
                return await cur.fetchall()

    async def ping(self) -> bool:
        """True if a trivial query succeeds."""
        try:
            async with self.connection() as conn:
                await conn.execute("SELECT 1")
            return True
        except StoreUnavailable:
            return False
