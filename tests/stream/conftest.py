"""Fixtures of the change-stream tests.

The tests run on a PostgreSQL cluster of their own (see ``private_postgres``: creating a
logical slot waits for every open transaction in the cluster, so a shared server with a
stuck session elsewhere would stall them).  ``PERSONALIZATION_TEST_CDC_PG_URL`` points them
at an existing server instead (it needs ``wal_level=logical``).

The relay is a JVM child process that takes seconds to start, so each test module shares
one database and one relay (module scope); tests isolate themselves by their own rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql


@pytest.fixture(scope="session")
def cdc_pg_admin_url() -> Iterator[str]:
    """Admin URL (database ``postgres``) of the cluster the change-stream tests use."""
    # Imported here: importing the plugin module (registered by tests/conftest.py) before
    # pytest registers it would keep pytest from rewriting its asserts.
    from personalization_dev.testing.kafka import postgres_binaries, private_postgres

    external = os.environ.get("PERSONALIZATION_TEST_CDC_PG_URL")
    if external:
        yield external
    elif postgres_binaries() is not None:
        with private_postgres() as url:
            yield url
    else:
        yield os.environ.get("PERSONALIZATION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def cdc_template(cdc_pg_admin_url: str) -> Iterator[str]:
    """A migrated template database in that cluster."""
    from personalization_dev.testing.kafka import scratch_database

    with scratch_database(cdc_pg_admin_url) as url:
        name = url.rsplit("/", 1)[1].split("?")[0]
        # Connections to a template block CREATE DATABASE ... TEMPLATE; none stay open.
        with psycopg.connect(cdc_pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        yield name
        with psycopg.connect(cdc_pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def cdc_db_url(cdc_pg_admin_url: str, cdc_template: str) -> Iterator[str]:
    """A migrated database for one test module."""
    from personalization_dev.testing.kafka import scratch_database

    with scratch_database(cdc_pg_admin_url, template=cdc_template) as url:
        yield url


@pytest.fixture
def cdc_fresh_db(cdc_pg_admin_url: str, cdc_template: str) -> Iterator[str]:
    """A migrated database for one test."""
    from personalization_dev.testing.kafka import scratch_database

    with scratch_database(cdc_pg_admin_url, template=cdc_template) as url:
        yield url
