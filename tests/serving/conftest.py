"""Fixtures of the read-path tests (real PostgreSQL and Redis from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from personalization.api.app import create_app
from personalization.composition import Platform
from personalization.config import Settings


@pytest.fixture
async def client(platform: Platform, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app in process, API keys not checked (these tests are about the read path, not auth)."""
    open_settings = settings.replace(auth={"dev_mode": True})
    app = create_app(open_settings, platform=platform)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


@pytest.fixture
def user_embeddings_table(db_url: str) -> str:
    """The online learner's durable table, created here if its migration has not landed yet."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS user_embeddings (user_id UUID PRIMARY KEY, dim INTEGER NOT NULL,"
            " embedding BYTEA NOT NULL)"
        )
    return db_url
