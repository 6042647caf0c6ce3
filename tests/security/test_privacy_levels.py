"""Privacy levels on every path, per level: ingest, learner, rerank, nightly (export: test_export.py).

standard: everything; limited: events kept without metadata and session, nothing
personalized; private: no behavioural events at all.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import numpy as np
import psycopg
from security_helpers import populate_user

from personalization.config import Settings
from personalization.learner.recompute import recompute_users
from personalization.nightly.job import NightlyJob

DIM = 384
LEVELS = ("standard", "limited", "private")


def _content(db_url: str, ids: list[str]) -> None:
    rng = np.random.default_rng(7)
    with psycopg.connect(db_url) as conn:
        for cid in ids:
            v = rng.standard_normal(DIM).astype("<f4")
            v /= np.linalg.norm(v)
            conn.execute("INSERT INTO content_items (content_id, content_type) VALUES (%s, 'chapter')", (cid,))
            conn.execute("INSERT INTO content_embeddings (content_id, model, dim, embedding) VALUES (%s, 't', %s, %s)",
                         (cid, DIM, v.tobytes()))


def _count(db_url: str, sql: str, uid: uuid.UUID) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql, (uid,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_each_level_on_every_path(open_client: httpx.AsyncClient, settings: Settings, db_url: str) -> None:
    _content(db_url, [f"PSA.{i}" for i in range(1, 13)])
    users = {level: (await populate_user(open_client, privacy=level, events=6, sessions=2))[0] for level in LEVELS}

    # Ingest: what is stored.
    q_events = "SELECT count(*) FROM personalization_events WHERE user_id = %s"
    q_meta = "SELECT count(*) FROM personalization_events WHERE user_id = %s AND (metadata IS NOT NULL OR " \
             "session_id IS NOT NULL)"
    assert [_count(db_url, q_events, users[lv]) for lv in LEVELS] == [6, 6, 0]
    assert [_count(db_url, q_meta, users[lv]) for lv in LEVELS] == [6, 0, 0]

    # Learner: no per-user learned state (scores or embedding) below the standard level.
    ls = Settings(database={"url": db_url}, redis={"url": settings.redis.url}, embedding={"dim": DIM})
    await asyncio.to_thread(recompute_users, ls, list(users.values()))
    q_emb = "SELECT count(*) FROM user_embeddings WHERE user_id = %s AND embedding IS NOT NULL"
    q_scores = "SELECT count(*) FROM user_signal_scores WHERE user_id = %s"
    assert [_count(db_url, q_emb, users[lv]) for lv in LEVELS] == [1, 0, 0]
    assert [_count(db_url, q_scores, users[lv]) > 0 for lv in LEVELS] == [True, False, False]

    # Rerank: limited and private users always get the non-personalized order, saying why.
    body = {"session_id": str(uuid.uuid4()), "candidates": [{"content_id": f"PSA.{i}"} for i in range(7, 12)]}
    served = {}
    for lv in LEVELS:
        r = await open_client.post(f"/v1/users/{users[lv]}/rerank", json=body)
        assert r.status_code == 200, r.text
        served[lv] = (r.json()["variant"], r.json()["reason"])
    assert served["limited"] == served["private"] == ("non_personalized", "privacy")
    assert served["standard"][1] != "privacy"
    assert served["standard"][0] == "personalized"

    # Nightly feature snapshot: per-user features only for levels that allow personalization.
    job = NightlyJob(db_url, settings.nightly, decay=settings.decay.config())
    await asyncio.to_thread(job.run)
    q_feat = "SELECT count(*) FROM feature_store.user_signal_features WHERE user_id = %s"
    assert [_count(db_url, q_feat, users[lv]) > 0 for lv in LEVELS] == [True, False, False]
