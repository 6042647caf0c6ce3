"""Fixtures of the read-path tests (real PostgreSQL and Redis from tests/conftest.py)."""

from __future__ import annotations

import psycopg
import pytest


@pytest.fixture
def user_embeddings_table(db_url: str) -> str:
    """The online learner's durable table, created here if its migration has not landed yet."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS user_embeddings (user_id UUID PRIMARY KEY, dim INTEGER NOT NULL,"
            " embedding BYTEA NOT NULL)"
        )
    return db_url
