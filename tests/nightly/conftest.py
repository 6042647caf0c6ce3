"""Helpers for the nightly job tests: users and events written straight to PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from nightly_helpers import add_events, add_user

from personalization.config import NightlySettings
from personalization.core.decay import DEFAULT_DECAY
from personalization.nightly.job import NightlyJob

NOW = datetime.now(UTC)


@pytest.fixture
def pg(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def nightly_settings() -> NightlySettings:
    return NightlySettings(timezone="UTC", retention_days=30)


@pytest.fixture
def job(db_url: str, nightly_settings: NightlySettings) -> NightlyJob:
    return NightlyJob(db_url, nightly_settings, decay=DEFAULT_DECAY)


@pytest.fixture
def make_user(pg: psycopg.Connection[Any]) -> Callable[..., uuid.UUID]:
    def make(privacy: str | None = "standard", events: int = 3, hours_ago: float = 5.0) -> uuid.UUID:
        u = add_user(pg, privacy)
        add_events(pg, u, [("passage", "read", 0.5, NOW - timedelta(hours=hours_ago + i)) for i in range(events)])
        return u

    return make
