"""A realistic simulated population of readers (deterministic for a seed).

Each reader has an affinity over the topic groups of :mod:`personalization_dev.demo.bible`
(Dirichlet, peaked) that drifts week by week towards a newly favoured topic.  A
session picks a topic from the affinity and chapters inside it by popularity
(Zipf, with the famous chapters on top); reading depth depends on the affinity,
and off-topic suggestions are mostly skipped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from personalization_dev.demo.bible import TOPICS, Chapter

DENOMINATIONS = ("baptist", "catholic", "methodist", "lutheran", "pentecostal", "presbyterian", "orthodox",
                 "anglican", "nondenominational", None)
GOALS = ("consistency", "understanding", "comfort", "prayer", "memorization", "study", None)
TRANSLATIONS = ("KJV", "NIV", "ESV", "NKJV", "NLT", "CSB")
TIMEZONES = ("America/New_York", "America/Chicago", "America/Los_Angeles", "Europe/London", "Africa/Lagos",
             "Asia/Manila", "America/Sao_Paulo", "Australia/Sydney")
PRIVACY = (("standard", 0.88), ("limited", 0.08), ("private", 0.04))
FAMOUS = ("PSA.23", "JHN.3", "1CO.13", "ROM.8", "PSA.91", "ISA.40", "MAT.5", "PRO.3", "PHP.4", "GEN.1", "JHN.1",
          "HEB.11", "PSA.1", "MAT.6", "ECC.3")


@dataclass
class Reader:
    """One simulated user."""

    user_id: uuid.UUID
    profile: dict[str, Any]
    traits: list[dict[str, Any]]
    affinity: np.ndarray  # over TOPICS, sums to 1; the current (drifting) one
    sessions_per_week: float
    history: list[np.ndarray] = field(default_factory=list)


@dataclass
class World:
    """Readers, the catalogue and its popularity prior."""

    readers: list[Reader]
    chapters: list[Chapter]
    topic_names: list[str]
    by_topic: dict[str, list[int]]
    popularity: np.ndarray  # per chapter, sums to 1 within each topic


def make_world(chapters: list[Chapter], n_users: int, seed: int = 42, *, fresh_ids: bool = False) -> World:
    """The seeded population; ``fresh_ids`` gives the readers random ids (the rest stays seeded)."""
    rng = np.random.default_rng(seed)
    topic_names = list(TOPICS)
    by_topic: dict[str, list[int]] = {t: [] for t in topic_names}
    for i, c in enumerate(chapters):
        by_topic[c.topic].append(i)
    popularity = np.zeros(len(chapters))
    for idxs in by_topic.values():
        ranks = rng.permutation(len(idxs)) + 1
        popularity[idxs] = 1.0 / ranks**1.1
    for i, c in enumerate(chapters):
        if c.content_id in FAMOUS:
            popularity[i] *= 25.0
    for idxs in by_topic.values():
        popularity[idxs] /= popularity[idxs].sum()
    readers = []
    p_levels = np.array([p for _, p in PRIVACY])
    for _ in range(n_users):
        seeded = uuid.UUID(bytes=rng.bytes(16), version=4)  # drawn either way: the stream stays the same
        uid = uuid.uuid4() if fresh_ids else seeded
        aff = rng.dirichlet(np.full(len(topic_names), 0.35))
        level = PRIVACY[int(rng.choice(len(PRIVACY), p=p_levels))][0]
        profile = {
            "denomination": DENOMINATIONS[int(rng.integers(len(DENOMINATIONS)))],
            "spiritual_goal": GOALS[int(rng.integers(len(GOALS)))],
            "preferred_translation": TRANSLATIONS[int(rng.integers(len(TRANSLATIONS)))],
            "timezone": TIMEZONES[int(rng.integers(len(TIMEZONES)))],
            "privacy_level": level,
        }
        start = int(rng.integers(5, 8))
        traits = [
            {"trait_type": "learning_style", "trait_value": str(rng.choice(["visual", "reflective", "auditory"])),
             "confidence": round(float(rng.uniform(0.5, 1.0)), 2)},
            {"trait_type": "content_format", "trait_value": str(rng.choice(["short", "long", "audio"])),
             "confidence": round(float(rng.uniform(0.5, 1.0)), 2)},
            {"trait_type": "notification_window", "trait_value": {"start": f"0{start}:00", "end": f"0{start + 1}:30"},
             "confidence": round(float(rng.uniform(0.7, 1.0)), 2)},
            {"trait_type": "favourite_topic", "trait_value": topic_names[int(np.argmax(aff))], "confidence": 0.6},
        ]
        readers.append(Reader(uid, profile, traits, aff, float(rng.gamma(2.0, 1.5)) + 0.5))
    return World(readers, chapters, topic_names, by_topic, popularity)


def simulate_events(world: World, days: int, end: datetime | None = None, seed: int = 43) -> list[dict[str, Any]]:
    """Every reader's sessions over ``days`` days ending at ``end``, as API event dicts in time order."""
    rng = np.random.default_rng(seed)
    end = end or datetime.now(UTC) - timedelta(minutes=1)
    start = end - timedelta(days=days)
    # Sessions near the end would run into the future; those events are left out.
    end_iso = end.isoformat()
    weeks = max(1, days // 7)
    events: list[dict[str, Any]] = []
    n_topics = len(world.topic_names)
    for r in world.readers:
        aff = r.affinity.copy()
        for w in range(weeks):
            # Drift: some weeks a reader moves towards a newly favoured topic.
            if rng.random() < 0.35:
                target = np.zeros(n_topics)
                target[int(rng.integers(n_topics))] = 1.0
                aff = 0.6 * aff + 0.4 * target
            r.history.append(aff.copy())
            n_sessions = rng.poisson(r.sessions_per_week)
            for _ in range(n_sessions):
                t0 = start + timedelta(days=7 * w + float(rng.uniform(0, 7)))
                if t0 >= end:
                    continue
                events.extend(e for e in _session(world, r, aff, t0, rng) if e["occurred_at"] <= end_iso)
        r.affinity = aff
    events.sort(key=lambda e: e["occurred_at"])
    return events


def _session(world: World, r: Reader, aff: np.ndarray, t0: datetime, rng: np.random.Generator) -> list[dict[str, Any]]:
    session = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    out: list[dict[str, Any]] = []
    t = t0
    for _ in range(int(rng.integers(2, 8))):
        explore = rng.random() < 0.2
        topic_idx = int(rng.integers(len(aff))) if explore else int(rng.choice(len(aff), p=aff))
        topic = world.topic_names[topic_idx]
        idxs = world.by_topic[topic]
        ch = world.chapters[idxs[int(rng.choice(len(idxs), p=world.popularity[idxs]))]]
        liking = aff[topic_idx]
        signals = [("view", 0.2)]
        if explore and liking < 0.1 and rng.random() < 0.7:
            signals.append(("skip", 0.5))
        else:
            if rng.random() < 0.4 + 0.5 * liking:
                signals.append(("read", 0.6))
                if rng.random() < 0.3 + 0.5 * liking:
                    signals.append(("complete", 0.8))
            if rng.random() < 0.25 * liking + 0.02:
                signals.append(("bookmark", 1.0))
            if rng.random() < 0.1 * liking + 0.01:
                signals.append(("share", 1.0))
        for sig, w in signals:
            t += timedelta(seconds=float(rng.uniform(5, 240)))
            ev: dict[str, Any] = {
                # Fresh per run (not from the seeded generator): a second demo run on the same
                # stack must not have its events dropped as replays of the first one's.
                "client_event_id": str(uuid.uuid4()),
                "user_id": str(r.user_id),
                "session_id": session,
                "content_id": ch.content_id,
                "content_type": "passage",
                "signal_type": sig,
                "signal_weight": w,
                "occurred_at": t.isoformat(),
            }
            if sig in ("read", "complete"):
                seconds = int(rng.integers(30, 900))
                ev["metadata"] = {"seconds": seconds, "translation": r.profile["preferred_translation"]}
            out.append(ev)
    return out


def relevant(world: World, reader: Reader, top: int = 2) -> set[str]:
    """Ground truth: content ids of the reader's currently favoured topics."""
    order = np.argsort(-reader.affinity)[:top]
    ids: set[str] = set()
    for k in order:
        ids.update(world.chapters[i].content_id for i in world.by_topic[world.topic_names[int(k)]])
    return ids
