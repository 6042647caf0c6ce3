"""Simulated readers for evaluating recommendations (issue 16).

A catalogue of books (series of chapters, each in two translations sharing a passage id)
and stand-alone devotionals, with topic-derived embeddings and tags; readers whose topic
interests drift over the simulated days, who mostly work through a book or reading plan
chapter by chapter, sometimes browse by interest (and popularity), switch translation now
and then, bookmark what they love and skip what they do not.

Everything is seeded: the same arguments give the same catalogue and events.  The data
is written through plain COPY (this is development tooling) so a test or the ``eval``
command can run on it like on real data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from personalization.core import embedding as emb

TOPICS = ("hope", "peace", "faith", "love", "wisdom", "prayer", "grief", "forgiveness", "courage", "joy",
          "justice", "creation")
TRANSLATIONS = ("KJV", "WEB")
GOALS = ("peace", "wisdom", "hope", "courage", "joy", "faith")


@dataclass
class SimCatalogItem:
    content_id: str
    content_type: str
    title: str
    passage_id: str | None
    translation: str | None
    series: str | None
    position: int | None
    tags: list[str]
    embedding: npt.NDArray[np.float32]


@dataclass
class SimReader:
    user_id: uuid.UUID
    preferred_translation: str
    spiritual_goal: str
    interests: npt.NDArray[np.float64]


@dataclass
class SimData:
    """Catalogue, readers and events (user_id, session_id, content_id, content_type, signal, weight, time)."""

    items: list[SimCatalogItem]
    readers: list[SimReader]
    events: list[tuple[uuid.UUID, uuid.UUID, str, str, str, float, datetime]] = field(default_factory=list)
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)


def _topic_mix(rng: np.random.Generator, k: int, concentration: float) -> npt.NDArray[np.float64]:
    return rng.dirichlet(np.full(k, concentration))


def simulate(*, books: int = 30, chapters: int = 20, devotionals: int = 60, readers: int = 300, days: int = 28,
             dim: int = 384, seed: int = 16, sessions_per_day: float = 0.6,
             end: datetime | None = None) -> SimData:
    """Build a catalogue and let the readers read for the ``days`` days before ``end`` (default now)."""
    rng = np.random.default_rng(seed)
    k = len(TOPICS)
    basis = rng.standard_normal((k, dim))
    items: list[SimCatalogItem] = []
    topic_of: list[npt.NDArray[np.float64]] = []
    book_members: list[list[int]] = []  # passage slots -> item indices per translation
    passage_topics: list[npt.NDArray[np.float64]] = []
    passage_items: list[list[int]] = []
    passage_book: list[int] = []
    for b in range(books):
        mix = _topic_mix(rng, k, 0.3)
        name = f"B{b:02d}"
        members: list[int] = []
        for c in range(1, chapters + 1):
            t = 0.7 * mix + 0.3 * _topic_mix(rng, k, 0.5)
            pid = f"{name}.{c}"
            vec_base = t @ basis
            slot: list[int] = []
            top = [TOPICS[i] for i in np.argsort(-t)[:2]]
            for tr in TRANSLATIONS:
                vec = vec_base + 0.15 * rng.standard_normal(dim)
                items.append(SimCatalogItem(f"{tr}:{pid}", "chapter", f"Book {b} chapter {c} ({tr})", pid, tr,
                                            name, c, [f"topic:{x}" for x in top] + top,
                                            emb.normalize(vec.astype(np.float32))))
                topic_of.append(t)
                slot.append(len(items) - 1)
            members.append(len(passage_items))
            passage_items.append(slot)
            passage_topics.append(t)
            passage_book.append(b)
        book_members.append(members)
    for d in range(devotionals):
        t = _topic_mix(rng, k, 0.2)
        top = [TOPICS[i] for i in np.argsort(-t)[:2]]
        vec = t @ basis + 0.15 * rng.standard_normal(dim)
        items.append(SimCatalogItem(f"dev-{d:03d}", "devotional", f"Devotional {d} on {top[0]}", None, None, None,
                                    None, [f"topic:{x}" for x in top] + top, emb.normalize(vec.astype(np.float32))))
        topic_of.append(t)
        passage_items.append([len(items) - 1])
        passage_topics.append(t)
        passage_book.append(-1)
    ptopics = np.stack(passage_topics)
    # Popularity: some passages are much more read than others (a heavy tail).
    quality = rng.lognormal(0.0, 0.8, len(passage_items))

    sim_readers: list[SimReader] = []
    for _ in range(readers):
        interests = _topic_mix(rng, k, 0.3)
        goal = GOALS[int(rng.integers(len(GOALS)))]
        sim_readers.append(SimReader(uuid.UUID(int=int(rng.integers(1, 2**62))), TRANSLATIONS[int(rng.random() < 0.4)],
                                     goal, interests))
    end = end or datetime.now(UTC)
    start = (end - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    data = SimData(items, sim_readers, start=start)
    for r in sim_readers:
        _simulate_reader(rng, r, data, ptopics, quality, passage_items, passage_book, book_members, days,
                         sessions_per_day, start)
    data.events.sort(key=lambda e: e[6])
    return data


def _simulate_reader(rng: np.random.Generator, r: SimReader, data: SimData, ptopics: npt.NDArray[np.float64],
                     quality: npt.NDArray[np.float64], passage_items: list[list[int]], passage_book: list[int],
                     book_members: list[list[int]], days: int, sessions_per_day: float, start: datetime) -> None:
    k = ptopics.shape[1]
    interests = r.interests.copy()
    target = _topic_mix(rng, k, 0.3)
    translation = r.preferred_translation
    plan: tuple[int, int] | None = None  # (book, next chapter index)
    seen: set[int] = set()
    activity = rng.uniform(0.5, 1.5) * sessions_per_day
    for day in range(days):
        # Interests drift toward a target that itself changes now and then.
        if rng.random() < 0.08:
            target = _topic_mix(rng, k, 0.3)
        interests = 0.93 * interests + 0.07 * target
        if rng.random() > activity:
            continue
        session = uuid.UUID(int=int(rng.integers(1, 2**62)))
        t = start + timedelta(days=day, hours=float(rng.uniform(5, 22)))
        if rng.random() < 0.08:  # readers switch between translations
            translation = TRANSLATIONS[1 - TRANSLATIONS.index(translation)]
        for _ in range(int(rng.integers(1, 5))):
            affinity = ptopics @ interests
            if plan is not None and rng.random() < 0.75:
                book, idx = plan
                members = book_members[book]
                if idx >= len(members):
                    plan = None
                    continue
                p = members[idx]
                plan = (book, idx + 1)
            else:
                score = 6.0 * affinity / affinity.max() + 0.5 * np.log(quality)
                score[list(seen)] -= 3.0
                prob = np.exp(score - score.max())
                p = int(rng.choice(len(prob), p=prob / prob.sum()))
                b = passage_book[p]
                if b >= 0 and rng.random() < 0.5:  # start working through that book from here
                    plan = (b, book_members[b].index(p) + 1)
            seen.add(p)
            slot = passage_items[p]
            item = data.items[slot[0] if len(slot) == 1 else slot[TRANSLATIONS.index(translation)]]
            like = float(affinity[p] / affinity.max())
            t += timedelta(minutes=float(rng.uniform(2, 15)))
            data.events.append((r.user_id, session, item.content_id, item.content_type, "view", 0.5, t))
            if like < 0.25 and rng.random() < 0.6:
                data.events.append((r.user_id, session, item.content_id, item.content_type, "skip", 1.0,
                                    t + timedelta(seconds=20)))
                continue
            data.events.append((r.user_id, session, item.content_id, item.content_type, "read",
                                round(min(1.0, 0.3 + 0.7 * like), 3), t + timedelta(minutes=3)))
            if like > 0.7 and rng.random() < 0.25:
                data.events.append((r.user_id, session, item.content_id, item.content_type, "bookmark", 1.0,
                                    t + timedelta(minutes=4)))


def write(conn: Any, data: SimData) -> None:
    """Write catalogue, embeddings, profiles and events with COPY (a psycopg connection; commits)."""
    with conn.cursor() as cur:
        with cur.copy("COPY content_items (content_id, content_type, title, passage_id, translation, series,"
                      " position, tags) FROM STDIN") as cp:
            for it in data.items:
                cp.write_row((it.content_id, it.content_type, it.title, it.passage_id, it.translation, it.series,
                              it.position, it.tags))
        with cur.copy("COPY content_embeddings (content_id, model, dim, embedding) FROM STDIN") as cp:
            for it in data.items:
                cp.write_row((it.content_id, "sim", it.embedding.shape[0], emb.encode(it.embedding)))
        with cur.copy("COPY user_profile (user_id, preferred_translation, spiritual_goal) FROM STDIN") as cp:
            for r in data.readers:
                cp.write_row((r.user_id, r.preferred_translation, r.spiritual_goal))
        with cur.copy("COPY personalization_events (user_id, session_id, content_id, content_type, signal_type,"
                      " signal_weight, occurred_at) FROM STDIN") as cp:
            for e in data.events:
                cp.write_row(e)
    conn.commit()
