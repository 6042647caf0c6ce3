"""A realistic simulated population of readers (deterministic for a seed).

Each reader has an affinity over the topic groups of :mod:`personalization_dev.demo.bible`
(Dirichlet, peaked) that drifts week by week towards a newly favoured topic.  A
session picks a topic from the affinity and passages inside it by popularity
(Zipf, with the famous chapters on top), or goes on with the book the reader is
working through (the next chapter); reading depth depends on the affinity, and
off-topic suggestions are mostly skipped.

Translations: every reader has a ``preferred_translation`` in the profile, sometimes
one the catalogue lacks (NIV, ESV); a reader reads mostly in one catalogue
translation (the preferred one when the catalogue has it, else a habit of their
own) and now and then switches to another for a passage.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from personalization_dev.demo.bible import TOPICS, Passage

DENOMINATIONS = ("baptist", "catholic", "methodist", "lutheran", "pentecostal", "presbyterian", "orthodox",
                 "anglican", "nondenominational", None)
GOALS = ("consistency", "understanding", "comfort", "prayer", "memorization", "study", None)
# Profiles' preferred translations and how common each is; NIV and ESV are not in the catalogue.
PREFERRED = (("KJV", 0.40), ("WEB", 0.22), ("ASV", 0.10), ("NIV", 0.18), ("ESV", 0.10))
# How often a reader reads a passage in another catalogue translation than their usual one.
SWITCH_P = 0.15
# How often a pick goes on with the book the reader is working through, when it is liked.
CONTINUE_P = 0.35
# How often a reader opens the first item of a list the app shows them (less further down).
OPEN_P = 0.6
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
    usual_translation: str  # the catalogue translation the reader reads most
    history: list[np.ndarray] = field(default_factory=list)
    # The book being worked through: (index of the last passage read in World.passages).
    reading: int | None = None


@dataclass
class World:
    """Readers, the catalogue's passages and their popularity prior."""

    readers: list[Reader]
    passages: list[Passage]
    translations: list[str]  # those of the catalogue
    topic_names: list[str]
    by_topic: dict[str, list[int]]
    popularity: np.ndarray  # per passage, sums to 1 within each topic

    def content_id(self, passage: int, translation: str) -> str:
        """The item of passage ``passage`` (an index) in ``translation``."""
        return f"{translation}:{self.passages[passage].passage_id}"


def make_world(passages: list[Passage], n_users: int, seed: int = 42, *, fresh_ids: bool = False) -> World:
    """A population of ``n_users`` readers over ``passages`` (deterministic for ``seed``; ``fresh_ids``
    gives the readers random ids, the rest stays seeded)."""
    rng = np.random.default_rng(seed)
    translations = list(passages[0].texts)
    by_topic: dict[str, list[int]] = {t: [] for t in TOPICS}
    for i, c in enumerate(passages):
        by_topic[c.topic].append(i)
    # Only the topics the passages cover (all of them for the whole canon).
    topic_names = [t for t in TOPICS if by_topic[t]]
    by_topic = {t: by_topic[t] for t in topic_names}
    popularity = np.zeros(len(passages))
    for idxs in by_topic.values():
        ranks = rng.permutation(len(idxs)) + 1
        popularity[idxs] = 1.0 / ranks**1.1
    for i, c in enumerate(passages):
        if c.passage_id in FAMOUS:
            popularity[i] *= 25.0
    for idxs in by_topic.values():
        popularity[idxs] /= popularity[idxs].sum()
    readers = []
    p_levels = np.array([p for _, p in PRIVACY])
    p_preferred = np.array([p for _, p in PREFERRED])
    for _ in range(n_users):
        seeded = uuid.UUID(bytes=rng.bytes(16), version=4)  # drawn either way: the stream stays the same
        uid = uuid.uuid4() if fresh_ids else seeded
        aff = rng.dirichlet(np.full(len(topic_names), 0.35))
        level = PRIVACY[int(rng.choice(len(PRIVACY), p=p_levels))][0]
        profile = {
            "denomination": DENOMINATIONS[int(rng.integers(len(DENOMINATIONS)))],
            "spiritual_goal": GOALS[int(rng.integers(len(GOALS)))],
            "preferred_translation": PREFERRED[int(rng.choice(len(PREFERRED), p=p_preferred))][0],
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
        preferred = profile["preferred_translation"]
        # A reader whose translation the catalogue lacks settles on one of its own.
        usual = preferred if preferred in translations else translations[int(rng.integers(len(translations)))]
        readers.append(Reader(uid, profile, traits, aff, float(rng.gamma(2.0, 1.5)) + 0.5, usual))
    return World(readers, passages, translations, topic_names, by_topic, popularity)


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


def _pick(world: World, r: Reader, aff: np.ndarray, rng: np.random.Generator) -> tuple[int, int, bool]:
    """(passage index, topic index, explored) of the next passage a reader opens."""
    last = r.reading
    if last is not None and rng.random() < CONTINUE_P:
        nxt = last + 1
        # The next chapter of the same book, if the reader still likes where it is.
        if nxt < len(world.passages) and world.passages[nxt].book == world.passages[last].book:
            topic_idx = world.topic_names.index(world.passages[nxt].topic)
            if aff[topic_idx] >= 0.1:
                return nxt, topic_idx, False
    explore = rng.random() < 0.2
    topic_idx = int(rng.integers(len(aff))) if explore else int(rng.choice(len(aff), p=aff))
    idxs = world.by_topic[world.topic_names[topic_idx]]
    return idxs[int(rng.choice(len(idxs), p=world.popularity[idxs]))], topic_idx, explore


def _session(world: World, r: Reader, aff: np.ndarray, t0: datetime, rng: np.random.Generator) -> list[dict[str, Any]]:
    session = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    out: list[dict[str, Any]] = []
    t = t0
    others = [tr for tr in world.translations if tr != r.usual_translation]
    for _ in range(int(rng.integers(2, 8))):
        passage, topic_idx, explore = _pick(world, r, aff, rng)
        translation = (
            others[int(rng.integers(len(others)))] if others and rng.random() < SWITCH_P else r.usual_translation
        )
        content_id = world.content_id(passage, translation)
        signals = reaction(float(aff[topic_idx]), explore, rng)
        if signals[-1][0] != "skip":
            r.reading = passage
        for sig, w in signals:
            t += timedelta(seconds=float(rng.uniform(5, 240)))
            out.append(_event(r, session, content_id, translation, sig, w, t, rng))
    return out


def reaction(liking: float, offered: bool, rng: np.random.Generator) -> list[tuple[str, float]]:
    """The signals (type, weight) of a reader opening a passage whose topic they like ``liking``.

    ``offered``: the passage was put in front of the reader (an exploration or a
    recommendation) rather than picked by them; off-topic offers are mostly skipped.
    """
    signals = [("view", 0.2)]
    if offered and liking < 0.1 and rng.random() < 0.7:
        signals.append(("skip", 0.5))
        return signals
    if rng.random() < 0.4 + 0.5 * liking:
        signals.append(("read", 0.6))
        if rng.random() < 0.3 + 0.5 * liking:
            signals.append(("complete", 0.8))
    if rng.random() < 0.25 * liking + 0.02:
        signals.append(("bookmark", 1.0))
    if rng.random() < 0.1 * liking + 0.01:
        signals.append(("share", 1.0))
    return signals


def _event(r: Reader, session: str, content_id: str, translation: str, sig: str, weight: float, t: datetime,
           rng: np.random.Generator) -> dict[str, Any]:
    ev: dict[str, Any] = {
        # Fresh per run (not from the seeded generator): a second demo run on the same
        # stack must not have its events dropped as replays of the first one's.
        "client_event_id": str(uuid.uuid4()),
        "user_id": str(r.user_id),
        "session_id": session,
        "content_id": content_id,
        "content_type": "passage",
        "signal_type": sig,
        "signal_weight": weight,
        "occurred_at": t.isoformat(),
    }
    if sig in ("read", "complete"):
        ev["metadata"] = {"seconds": int(rng.integers(30, 900)), "translation": translation}
    return ev


def respond(world: World, r: Reader, shown: list[str], rng: np.random.Generator,
            now: datetime | None = None) -> list[dict[str, Any]]:
    """What reader ``r`` does with a list of content ids put in front of them, as events stamped now.

    The same behaviour model as the simulated sessions, in both arms of the experiment:
    the reader opens an item with a chance falling with its position, then reacts to it
    by how much they like its topic now.  So an arm whose lists match the readers'
    interests better earns more reads and bookmarks, and nothing else differs.
    """
    index = {p.passage_id: i for i, p in enumerate(world.passages)}
    session = str(uuid.uuid4())
    t = now or datetime.now(UTC)
    out: list[dict[str, Any]] = []
    for pos, content_id in enumerate(shown):
        translation, _, passage_id = content_id.partition(":")
        passage = index.get(passage_id)
        if passage is None or rng.random() >= OPEN_P * 0.85**pos:
            continue
        liking = float(r.affinity[world.topic_names.index(world.passages[passage].topic)])
        for sig, w in reaction(liking, True, rng):
            # Milliseconds apart: after the exposure, and never ahead of the ingest's clock.
            t += timedelta(milliseconds=1)
            out.append(_event(r, session, content_id, translation, sig, w, t, rng))
    return out


def relevant(world: World, reader: Reader, top: int = 2) -> set[str]:
    """Ground truth: passage ids of the reader's currently favoured topics (in any translation)."""
    order = np.argsort(-reader.affinity)[:top]
    ids: set[str] = set()
    for k in order:
        ids.update(world.passages[i].passage_id for i in world.by_topic[world.topic_names[int(k)]])
    return ids
