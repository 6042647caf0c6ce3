"""Loading the serving models from PostgreSQL, and keeping them current in a running process.

A serving process polls two cheap reads (the durable catalogue version that every content
import raises, ``catalog_version``, and the artefact versions in ``recommend_models``) at
most every ``refresh_s`` seconds, from the request path but never on it: a check runs as a
background task, and a new catalogue or model is loaded and indexed beside the current
one, then swapped in whole.  So a content import or a nightly training reaches every API
process without a restart, and the first request after start-up waits only for an
exact-search load (the HNSW index follows in the background).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from personalization.config import RecommendSettings
from personalization.core.decay import DAY_S, DecayConfig
from personalization.recommend.ann import IndexParams, VectorIndex
from personalization.recommend.catalog import Catalog, CatalogRow, build_catalog
from personalization.recommend.models import CFModel, Neighbours, Trending
from personalization.recommend.sources.base import Models
from personalization.store.recommend import CatalogTuple, RecommendStore

log = logging.getLogger(__name__)


def catalog_from_rows(rows: list[CatalogTuple], dim: int) -> Catalog:
    """The catalogue of store rows."""
    return build_catalog(
        (CatalogRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7] or ()), bytes(r[8]) if r[8] else None)
         for r in rows),
        dim,
    )


def trending_from_engagement(catalog: Catalog, rows: list[tuple[str, str, float]], decay: DecayConfig,
                             content_type: str | None = None) -> Trending:
    """Trending scores from (content_id, signal_type, decayed |weight|) rows: the signal's scale applied."""
    scores = np.zeros(catalog.size, dtype=np.float64)
    for content_id, signal_type, weight in rows:
        p = catalog.passage_of_content(content_id)
        if p is None or (content_type is not None and catalog.passage_type[p] != content_type):
            continue
        scores[p] += decay.for_signal(signal_type).scale * weight
    np.maximum(scores, 0.0, out=scores)
    return Trending.from_scores(scores.astype(np.float32))


class ModelLoader:
    """Holds the current :class:`Models` of a process and refreshes them in the background."""

    def __init__(self, store: RecommendStore, settings: RecommendSettings, decay: DecayConfig, dim: int) -> None:
        self.store = store
        self.settings = settings
        self.decay = decay
        self.dim = dim
        self.models: Models | None = None
        self.versions: tuple[int, dict[str, int]] | None = None
        self._checked_at = -1e18
        self._trending_at = -1e18
        self._first = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0

    async def current(self) -> Models:
        """The models to serve with; loads them on first use, schedules a version check when due."""
        if self.models is None:
            async with self._first:
                if self.models is None:
                    versions = await self._versions()
                    self.models = await self.load(versions, ann=False)
                    self.versions = versions
                    self._checked_at = self._trending_at = time.monotonic()
                    # The ANN index is built after the first requests are served.
                    self._spawn(self._reload(versions))
            return self.models
        now = time.monotonic()
        if now - self._checked_at >= self.settings.refresh_s and (self._task is None or self._task.done()):
            self._checked_at = now
            self._spawn(self._check())
        return self.models

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.get_running_loop().create_task(coro)

    async def wait_idle(self) -> None:
        """Wait for a running check or reload (tests, benchmarks)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _versions(self) -> tuple[int, dict[str, int]]:
        return await self.store.catalog_version(), await self.store.model_versions()

    async def _check(self) -> None:
        try:
            versions = await self._versions()
            if versions != self.versions:
                await self._reload(versions)
            elif time.monotonic() - self._trending_at >= self.settings.trending_refresh_s and self.models:
                self._trending_at = time.monotonic()
                trending = await self.trending(self.models.catalog, None, self.settings.trending_window_days)
                self.models = dataclasses.replace(self.models, trending=trending)
        except Exception:  # a failed refresh keeps the current models; the next check tries again
            log.exception("recommendation model refresh failed")

    async def _reload(self, versions: tuple[int, dict[str, int]]) -> None:
        try:
            models = await self.load(versions, ann=True)
        except Exception:
            log.exception("recommendation model reload failed")
            return
        self.models, self.versions = models, versions
        self._trending_at = time.monotonic()
        self.reloads += 1
        log.info("recommendation models loaded", extra={"catalog_version": versions[0], "models": versions[1],
                                                        "passages": models.catalog.size})

    async def load(self, versions: tuple[int, dict[str, int]], *, ann: bool) -> Models:
        """Catalogue, index, CF factors, neighbours and trending, built off the event loop."""
        rows = await self.store.catalog(self.dim)
        catalog = await asyncio.to_thread(catalog_from_rows, rows, self.dim)
        del rows
        args = IndexParams.of(self.settings)
        if not ann:
            args = dataclasses.replace(args, min_items=catalog.size + 1)  # exact search until the index is built
        index = await asyncio.to_thread(VectorIndex, catalog.vectors, catalog.has_vector, args)
        cf = None
        found = await self.store.model("cf") if "cf" in versions[1] else None
        if found is not None:
            model = CFModel.from_bytes(found[1])
            cf = await asyncio.to_thread(model.aligned, catalog, args)
        neighbours = None
        found = await self.store.model("neighbours") if "neighbours" in versions[1] else None
        if found is not None:
            neighbours = await asyncio.to_thread(Neighbours.from_bytes(found[1]).aligned, catalog)
        trending = await self.trending(catalog, None, self.settings.trending_window_days)
        return Models(catalog, index, cf, neighbours, trending)

    async def trending(self, catalog: Catalog, content_type: str | None, window_days: int) -> Trending:
        """Time-decayed engagement over the last ``window_days`` days."""
        until = datetime.now(UTC)
        rows = await self.store.window_engagement(until - timedelta(days=window_days), until,
                                                  self.settings.trending_half_life_days * DAY_S)
        return trending_from_engagement(catalog, rows, self.decay, content_type)
