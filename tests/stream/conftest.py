"""Fixtures of the change-stream tests.

The relay is a JVM child process that takes seconds to start, so each test module shares
one database and one relay (module scope); tests isolate themselves by their own rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("PERSONALIZATION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def cdc_db_url(template_db: str) -> Iterator[str]:
    """A migrated database for one test module, cloned from the shared template."""
    # Imported here: importing the plugin module before pytest registers it would keep
    # pytest from rewriting its asserts.
    from personalization.stream.testing import scratch_database

    with scratch_database(ADMIN_URL, template=template_db) as url:
        yield url
