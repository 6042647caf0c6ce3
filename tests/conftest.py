"""Shared fixtures: real PostgreSQL and Redis, isolated per test.

* ``db_url``: a fresh database per test, cloned from a template migrated once
  (the template's name carries a hash of the migration files, so a schema change
  makes a new template and concurrent test runs share a finished one).
* ``redis_url``: a Redis logical database of its own (1..15), taken with a file
  lock so concurrent pytest processes never share one, flushed before use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import httpx
import psycopg
import pytest
import redis
from psycopg import sql

from personalization.composition import Platform, open_platform
from personalization.config import Settings
from personalization.store import migrate
from personalization.store.urls import with_dbname
from personalization_dev.testing.databases import drop_database
from personalization_dev.testing.http import AppClients
from personalization_dev.testing.waiting import wait_until

# Kafka broker fixtures (session-scoped Tansu broker), shared by every test package.
pytest_plugins = ["personalization_dev.testing.kafka"]

PG_URL = os.environ.get("PERSONALIZATION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("PERSONALIZATION_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _template_name() -> str:
    h = hashlib.sha256()
    for f in migrate.migration_files():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return f"pz_template_{h.hexdigest()[:12]}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """URL of the maintenance database of the test server (for CREATE/DROP DATABASE)."""
    return PG_URL


@pytest.fixture(scope="session")
def template_db() -> str:
    """A migrated template database (created once per schema version)."""
    name = _template_name()
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        # Serialise template creation across concurrent test processes.
        conn.execute("SELECT pg_advisory_lock(hashtext('personalization-test-template'))")
        try:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                building = name + "_build"
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(building)))
                migrate.upgrade(with_dbname(PG_URL, building))
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name))
                )
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('personalization-test-template'))")
    return name


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test only."""
    name = f"pz_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db))
        )
    try:
        yield with_dbname(PG_URL, name)
    finally:
        # With the slots a relay test may leave on it: a stray slot holds WAL for good.
        drop_database(PG_URL, name)


def _take_redis_db() -> tuple[int, IO[str]] | None:
    """Lock a free Redis logical database (1..15) for this process: its number and lock file."""
    lock_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    for n in range(1, 16):
        fh = open(lock_dir / f"personalization-test-redis-{n}.lock", "w")  # noqa: SIM115 - closed by _redis_db
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        return n, fh
    return None


@contextlib.contextmanager
def _redis_db() -> Iterator[int]:
    # Concurrent test runs may hold all fifteen; one of them frees its database when its test ends.
    n, fh = wait_until(_take_redis_db, 300, "a free Redis test database (other test runs hold 1..15)", interval_s=0.2)
    try:
        yield n
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of a Redis logical database reserved for this test and empty at start."""
    with _redis_db() as n:
        url = f"{REDIS_BASE}/{n}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
        yield url


@pytest.fixture
def settings(db_url: str, redis_url: str) -> Settings:
    """Settings pointing at this test's database and Redis db."""
    return Settings(database={"url": db_url}, redis={"url": redis_url}, ingest={"group_commit_window_ms": 1.0})


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    """The wired library, open for the test."""
    async with open_platform(settings) as p:
        yield p


@pytest.fixture
async def make_client() -> AsyncIterator[AppClients]:
    """``await make_client(settings, platform)``: an HTTP client on the real app, in process (ASGI).

    The one way the tests build a client: ``settings`` decide API keys (``auth.dev_mode``),
    limits and the rest, ``platform`` the wired library behind it.  Every client made is
    closed when the test ends.
    """
    clients = AppClients()
    try:
        yield clients
    finally:
        await clients.aclose()


@pytest.fixture
async def client(platform: Platform, make_client: AppClients, settings: Settings) -> httpx.AsyncClient:
    """The real app in development mode (no API keys), for tests that are not about authentication.

    The tests of authentication itself (tests/security) make clients with keys checked.
    """
    return await make_client(settings.replace(auth={"dev_mode": True}), platform)


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test's Redis db, for assertions."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()
