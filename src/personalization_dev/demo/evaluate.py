"""The demo's evaluation: readers log in, their candidates are reranked, hits are counted.

Candidates are the most engaged passages (signals on any translation count for the
passage), each offered in the reader's translation: the profile's
``preferred_translation`` when the catalogue has it, else the translation the reader
uses most (from the stored events).  So a list never holds two translations of one
passage.  Passages the reader's latest session showed, in any translation, are left
out, and the rerank leaves out the session's recent items as the specification says.
A hit is a recommended passage in the reader's currently favoured topics; the
baseline is the popularity order of the same candidates.

With the platform's recommender installed, each reader's own list
(``GET /v1/users/{id}/recommendations``) is scored the same way.  Then every reader acts
on the list the app serves them (the recommender's, else rerank's) with the simulation's
behaviour model (:func:`~personalization_dev.demo.simulate.respond`), through
``POST /v1/events``: the experiment's arms differ only in the lists they were served.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import psycopg
from rich.progress import Progress

from personalization_dev.demo import recommender
from personalization_dev.demo.bible import Chapter
from personalization_dev.demo.errors import DemoError
from personalization_dev.demo.simulate import Reader, World, relevant, respond


def _catalog(
    conn: psycopg.Connection[Any], candidates: int
) -> tuple[list[tuple[str, int]], dict[tuple[str, str], str]]:
    """(popular passages with their event counts, {(passage, translation): content_id})."""
    popular = conn.execute(
        "SELECT i.passage_id, count(*) AS n FROM personalization_events e"
        " JOIN content_items i ON i.content_id = e.content_id WHERE i.passage_id IS NOT NULL"
        " GROUP BY i.passage_id ORDER BY n DESC, i.passage_id LIMIT %s", (candidates,)
    ).fetchall()
    items = conn.execute(
        "SELECT passage_id, translation, content_id FROM content_items"
        " WHERE passage_id IS NOT NULL AND translation IS NOT NULL"
    ).fetchall()
    return [(str(p), int(n)) for p, n in popular], {(str(p), str(t)): str(c) for p, t, c in items}


def _reading_translations(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, str]:
    """Per reader, the translation of most of their events (ties: alphabetical)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (e.user_id) e.user_id, i.translation FROM personalization_events e"
        " JOIN content_items i ON i.content_id = e.content_id WHERE i.translation IS NOT NULL"
        " GROUP BY e.user_id, i.translation ORDER BY e.user_id, count(*) DESC, i.translation"
    ).fetchall()
    return {r[0]: str(r[1]) for r in rows}


def reader_translation(reader: Reader, translations: Sequence[str], most_used: dict[uuid.UUID, str]) -> str:
    """The translation recommendations come in for ``reader``."""
    preferred = reader.profile.get("preferred_translation")
    if preferred in translations:
        return str(preferred)
    return most_used.get(reader.user_id) or translations[0]


# A little over 80 lines: one pass over the held-out readers computes every compared method's figures.
async def evaluate(base: str, headers: dict[str, str], limits: httpx.Limits, world: World,
                   chapters: list[Chapter], database_url: str, sessions: dict[str, tuple[str, set[str]]],
                   n_candidates: int, top_k: int, eval_users: int, progress: Progress,
                   with_recommender: bool = False, seed: int = 44) -> dict[str, Any]:
    """Log readers in, rerank their candidates (and fetch their recommendations), compare the
    hit rates with popularity's, and send what the readers do with the lists they were served."""
    rng = np.random.default_rng(seed)
    items = {c.content_id: c for c in chapters}
    with psycopg.connect(database_url) as conn:
        popular, by_passage = _catalog(conn, n_candidates)
        most_used = _reading_translations(conn)
        personalizable = {r[0] for r in conn.execute(
            "SELECT user_id FROM user_embeddings WHERE embedding IS NOT NULL").fetchall()}
        scores = conn.execute(
            "SELECT user_id, content_type, signal_type, score, event_count FROM user_signal_scores"
        ).fetchall()
    top_n = popular[0][1] if popular else 1
    eligible = [r for r in world.readers if r.user_id in personalizable and r.profile["privacy_level"] == "standard"]
    sample = eligible[:eval_users]
    t = progress.add_task("recommendations: login + rerank", total=len(sample))
    hits_p: list[float] = []
    hits_pop: list[float] = []
    hits_rec: list[float] = []
    reactions: list[dict[str, Any]] = []
    variants: dict[str, int] = {}
    samples: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:
        for reader in sample:
            login = await client.post(f"/v1/users/{reader.user_id}/login")
            if login.status_code != 200:
                raise DemoError(f"login of {reader.user_id} -> HTTP {login.status_code}: {login.text[:300]}")
            translation = reader_translation(reader, world.translations, most_used)
            # The reader's latest session: what it showed is excluded from the recommendations.
            session, seen = sessions.get(str(reader.user_id), (str(uuid.uuid4()), set()))
            candidates = [
                {"content_id": by_passage[(p, translation)], "score": round(n / top_n, 6)}
                for p, n in popular
                if p not in seen and (p, translation) in by_passage
            ]
            r = await client.post(f"/v1/users/{reader.user_id}/rerank",
                                  json={"session_id": session, "candidates": candidates})
            if r.status_code != 200:
                raise DemoError(f"rerank for {reader.user_id} -> HTTP {r.status_code}: {r.text[:300]}")
            body = r.json()
            variant = str(body.get("variant"))
            variants[variant] = variants.get(variant, 0) + 1
            ranked = _ranked_ids(body)[:top_k]
            excluded = set(body.get("excluded") or [])
            truth = relevant(world, reader)
            # Popularity, with the same exclusions, is the baseline for every reader.
            pop_top = [str(c["content_id"]) for c in candidates if c["content_id"] not in excluded][:top_k]
            hits_pop.append(_hits(pop_top, items, truth) / top_k)
            served, rec = ranked, None
            if with_recommender:
                rec = await recommender.recommendations(client, str(reader.user_id), top_k)
                served = [str(it["content_id"]) for it in rec.get("items") or []]
                if rec.get("variant") == "personalized":
                    hits_rec.append(_hits(served, items, truth) / top_k)
            if variant == "personalized":
                hits_p.append(_hits(ranked, items, truth) / top_k)
                if len(samples) < 3:
                    samples.append(_sample_report(reader, world, translation, ranked, items, scores, body, rec))
            reactions.extend(respond(world, reader, served, rng))
            progress.advance(t)
        stored = await _send_reactions(client, reactions)
    p = statistics.fmean(hits_p) if hits_p else 0.0
    q = statistics.fmean(hits_pop) if hits_pop else 0.0
    out: dict[str, Any] = {
        "evaluated_users": len(sample),
        "variants": variants,
        "personalized_hit_rate": round(p, 4),
        "popularity_hit_rate": round(q, 4),
        "lift": round(p / q, 2) if q else None,
        "served_list": "recommendations" if with_recommender else "rerank",
        "reaction_events": len(reactions),
        "reaction_events_stored": stored,
        "samples": samples,
    }
    if with_recommender:
        h = statistics.fmean(hits_rec) if hits_rec else 0.0
        out.update(recommender_hit_rate=round(h, 4), recommender_lift=round(h / q, 2) if q else None)
    return out


async def _send_reactions(client: httpx.AsyncClient, events: list[dict[str, Any]], batch: int = 500) -> int:
    """The readers' reactions through ``POST /v1/events``; the number stored (committed on return)."""
    stored = 0
    for i in range(0, len(events), batch):
        r = await client.post("/v1/events", json={"events": events[i : i + batch]})
        if r.status_code >= 400:
            raise DemoError(f"POST /v1/events (reactions) -> HTTP {r.status_code}: {r.text[:300]}")
        stored += int(r.json()["accepted"])
    return stored


def _hits(ranked: Sequence[str], items: dict[str, Chapter], truth: set[str]) -> int:
    return sum(1 for cid in ranked if cid in items and items[cid].passage_id in truth)


def _ranked_ids(body: dict[str, Any]) -> list[str]:
    found = body.get("items") or body.get("ranked") or body.get("candidates") or []
    return [it["content_id"] if isinstance(it, dict) else str(it) for it in found]


def _sample_report(reader: Reader, world: World, translation: str, ranked: list[str], items: dict[str, Chapter],
                   scores: list[tuple[Any, ...]], rerank_body: dict[str, Any],
                   rec: dict[str, Any] | None) -> dict[str, Any]:
    mine = sorted((s for s in scores if s[0] == reader.user_id), key=lambda s: -abs(float(s[3])))[:3]
    order = np.argsort(-reader.affinity)[:2]
    return {
        "user_id": str(reader.user_id),
        "favoured_topics": [world.topic_names[int(k)] for k in order],
        "preferred_translation": reader.profile.get("preferred_translation"),
        "recommended_in": translation,
        "variant": rerank_body.get("variant"),
        "session_recent_excluded": list(rerank_body.get("excluded") or [])[:5],
        "top_signals": [{"content_type": s[1], "signal_type": s[2], "score": round(float(s[3]), 3),
                         "events": int(s[4])} for s in mine],
        "recommendations": [
            {"content_id": cid, "title": items[cid].title if cid in items else None,
             "topic": items[cid].topic if cid in items else None,
             "tags": list(items[cid].tags) if cid in items else [],
             "opening": " ".join(items[cid].text.split()[:8]) + "..." if cid in items else ""}
            for cid in ranked[:5]
        ],
        "platform_recommendations": None if rec is None else {
            "variant": rec.get("variant"),
            "items": [{"content_id": str(it["content_id"]),
                       "title": items[str(it["content_id"])].title if str(it["content_id"]) in items else None,
                       "reasons": list(it.get("reasons") or [])}
                      for it in (rec.get("items") or [])[:5]],
        },
    }
