"""Nightly training of the recommender: CF factors and co-engagement neighbours into PostgreSQL.

Run by ``personalization jobs nightly`` (and the scheduler) after the rollups.  Reads only
PostgreSQL (every stored event of readers whose privacy level permits personalization),
so a rebuild needs no Kafka; both artefacts are replaced in one transaction and every
serving process picks the new versions up on its next check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from personalization.config import RecommendSettings, Settings
from personalization.core.decay import DecayConfig
from personalization.core.privacy import DEFAULT_PRIVACY_LEVEL, POLICIES
from personalization.recommend.catalog import Catalog
from personalization.recommend.loader import catalog_from_rows
from personalization.recommend.training import (
    EventColumns,
    co_engagement,
    interaction_matrix,
    reader_codes,
    train_cf,
)
from personalization.store.db import Database
from personalization.store.recommend import RecommendStore


@dataclass
class TrainReport:
    """What a training run read and wrote."""

    events: int
    readers: int
    passages: int
    interactions: int
    versions: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "readers": self.readers, "passages": self.passages,
                "interactions": self.interactions, "versions": self.versions,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def personalizable_levels() -> tuple[tuple[str, ...], bool]:
    """Stored privacy levels whose events may train per-reader models, and whether NULL may."""
    levels = tuple(sorted(n for n, p in POLICIES.items() if p.personalize))
    return levels, POLICIES[DEFAULT_PRIVACY_LEVEL].personalize


async def load_events(store: RecommendStore, until: datetime) -> tuple[EventColumns, list[object]]:
    """Training events before ``until`` as columns, with the reader ids in code order."""
    levels, null_ok = personalizable_levels()
    users: list[object] = []
    content: list[str] = []
    types: list[str] = []
    weights: list[float] = []
    at: list[float] = []
    async for chunk in store.training_events(until, levels, null_ok):
        for u, c, t, w, a in chunk:
            users.append(u)
            content.append(c)
            types.append(t)
            weights.append(w)
            at.append(a)
    codes, ids = reader_codes(users)
    return EventColumns(codes, content, types, np.array(weights, dtype=np.float64),
                        np.array(at, dtype=np.float64)), ids


def fit(catalog: Catalog, events: EventColumns, n_users: int, settings: RecommendSettings, decay: DecayConfig,
        now: float) -> tuple[dict[str, bytes], int, dict[str, float]]:
    """Train both artefacts (CPU-bound; run it off the event loop)."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    matrix = interaction_matrix(events, catalog, n_users, decay, now)
    seconds["matrix"] = time.perf_counter() - t0
    out: dict[str, bytes] = {}
    t0 = time.perf_counter()
    cf = train_cf(matrix, catalog, settings)
    seconds["cf"] = time.perf_counter() - t0
    if cf is not None:
        out["cf"] = cf.to_bytes()
    t0 = time.perf_counter()
    if matrix.nnz:
        out["neighbours"] = co_engagement(matrix, catalog, settings).to_bytes()
    seconds["neighbours"] = time.perf_counter() - t0
    return out, int(matrix.nnz), seconds


def train_blocking(settings: Settings, *, on_step: Callable[[str], None] | None = None) -> TrainReport:
    """Open a small pool, train and store (for the nightly CLI and its scheduler thread)."""

    async def go() -> TrainReport:
        db = Database(settings, min_size=1, max_size=2)
        await db.open()
        try:
            return await train(db, settings.recommend, dim=settings.embedding.dim, decay=settings.decay.config(),
                               on_step=on_step)
        finally:
            await db.close()

    return asyncio.run(go())


async def train(db: Database, settings: RecommendSettings, *, dim: int,
                decay: DecayConfig, until: datetime | None = None,
                on_step: Callable[[str], None] | None = None) -> TrainReport:
    """Train on every event before ``until`` (default now) and store the artefacts."""
    until = until or datetime.now(UTC)
    store = RecommendStore(db)
    step = on_step or (lambda _: None)
    t0 = time.perf_counter()
    step("loading catalogue and events")
    catalog = await asyncio.to_thread(catalog_from_rows, await store.catalog(dim), dim)
    events, users = await load_events(store, until)
    load_s = time.perf_counter() - t0
    step("training collaborative filtering and neighbours")
    artefacts, nnz, seconds = await asyncio.to_thread(fit, catalog, events, len(users), settings, decay,
                                                      until.timestamp())
    seconds["load"] = load_s
    params = {"factors": settings.cf_factors, "iterations": settings.cf_iterations,
              "regularization": settings.cf_regularization, "alpha": settings.cf_alpha,
              "neighbours": settings.neighbours, "shrink": settings.neighbour_shrink,
              "events": len(events), "readers": len(users), "passages": catalog.size}
    step("storing artefacts")
    versions = await store.put_models([(k, v, until, params) for k, v in artefacts.items()])
    return TrainReport(len(events), len(users), catalog.size, nnz, versions, seconds)
