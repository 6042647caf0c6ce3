"""Fixtures of the recommendation tests: a small simulated catalogue and readers in the test database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from personalization.composition import Platform, open_platform
from personalization.config import Settings
from personalization.recommend.nightly import train
from personalization_dev import recsim
from personalization_dev.testing.http import AppClients


@pytest.fixture
def sim() -> recsim.SimData:
    """A small seeded population: 8 books x 10 chapters in two translations, 20 devotionals, 60 readers."""
    return recsim.simulate(books=8, chapters=10, devotionals=20, readers=60, days=14, seed=5)


@pytest.fixture
def sim_db(db_url: str, sim: recsim.SimData) -> recsim.SimData:
    """The simulated data written into this test's database."""
    with psycopg.connect(db_url) as conn:
        recsim.write(conn, sim)
    return sim


@pytest.fixture
async def rec_platform(settings: Settings, sim_db: recsim.SimData) -> AsyncIterator[Platform]:
    """The platform over the simulated data, trained once; models re-checked every 0.1 s."""
    async with open_platform(settings.replace(recommend={"refresh_s": 0.1})) as p:
        await train(p.db, p.recommender.settings, dim=p.settings.embedding.dim, decay=p.recommender.decay)
        yield p


@pytest.fixture
async def rec_client(rec_platform: Platform, settings: Settings, make_client: AppClients) -> httpx.AsyncClient:
    """The real app in process over ``rec_platform`` (API keys not checked)."""
    return await make_client(settings.replace(auth={"dev_mode": True}), rec_platform)
