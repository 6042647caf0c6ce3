"""Models and index stay current without a restart; a rebuild from PostgreSQL alone (no Kafka) is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import psycopg

from personalization.composition import Platform, open_platform
from personalization.config import Settings
from personalization.core import embedding as emb
from personalization.core.catalog import CatalogFields
from personalization.errors import NotFound
from personalization.recommend.nightly import train
from personalization.serving.content_import import ContentBatch, import_batch
from personalization_dev import recsim
from personalization_dev.testing.waiting import async_wait_until


def _cli(*args: str, db_url: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PERSONALIZATION_DATABASE_URL": db_url, "PERSONALIZATION_REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "personalization.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


async def test_content_import_reaches_a_running_process(rec_platform: Platform, sim_db: recsim.SimData) -> None:
    rec = rec_platform.recommender
    source = sim_db.items[0]
    await rec.models()
    await rec.loader.wait_idle()
    try:
        await rec.similar("NEW:1", 3)
        raise AssertionError("unknown content must be 404")
    except NotFound:
        pass
    # The regular importer (`personalization content import`): a near-copy of an existing item's vector.
    vec = emb.normalize((source.embedding + 0.01 * np.ones_like(source.embedding)).astype(np.float32))
    batch = ContentBatch(["NEW:1"], [vec], [CatalogFields(content_type="devotional", title="A new devotional")],
                         [None], [1])
    await import_batch(rec_platform.db, rec_platform.serving.cache, batch, "sim")

    async def visible() -> bool:
        await rec.models()
        try:
            await rec.similar("NEW:1", 3)
        except NotFound:
            return False
        return True

    await async_wait_until(visible, 20, "the imported item NEW:1 in the running process's index")
    # Indexed: its nearest neighbour by embedding is the item it was copied from.
    similar = await rec.similar("NEW:1", 3)
    assert similar.items[0].content_id == source.content_id


async def test_nightly_retrain_is_picked_up(rec_platform: Platform, sim_db: recsim.SimData) -> None:
    rec = rec_platform.recommender
    await rec.models()
    await rec.loader.wait_idle()
    before = rec.loader.versions
    assert before is not None and set(before[1]) == {"cf", "neighbours"}
    report = await train(rec_platform.db, rec.settings, dim=rec_platform.settings.embedding.dim, decay=rec.decay)

    async def swapped() -> bool:
        await rec.models()
        return rec.loader.versions is not None and rec.loader.versions[1] == report.versions

    await async_wait_until(swapped, 20, "the retrained model versions loaded by the running process")
    assert rec.loader.models is not None and rec.loader.models.cf is not None


async def test_rebuild_from_postgresql_alone(settings: Settings, db_url: str, redis_url: str,
                                             sim_db: recsim.SimData) -> None:
    r = _cli("learner", "recompute", "--all", db_url=db_url, redis_url=redis_url)
    assert r.returncode == 0, r.stderr
    r = _cli("jobs", "nightly", "--json", db_url=db_url, redis_url=redis_url)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT count(*) FROM personalization_events WHERE user_id IS NOT NULL").fetchone()
    assert stored is not None and out["recommend"]["events"] == stored[0] == len(sim_db.events)
    assert set(out["recommend"]["versions"]) == {"cf", "neighbours"}
    counts: dict[object, int] = {}
    for e in sim_db.events:
        counts[e[0]] = counts.get(e[0], 0) + 1
    busiest = max(counts, key=lambda u: counts[u])
    async with open_platform(settings) as p:
        result = await p.recommender.for_user(busiest, 50)  # type: ignore[arg-type]
    reasons = {x.split(":")[0] for it in result.items for x in it.reasons}
    # Every learned part is there: the learner's embedding, CF and neighbours trained by the nightly job.
    assert {"embedding", "collaborative", "similar_to"} <= reasons, reasons
