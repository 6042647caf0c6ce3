"""Synthetic population and events for benchmarks (deterministic for a seed)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

SIGNALS: tuple[tuple[str, float, float], ...] = (
    # (signal_type, probability, weight)
    ("view", 0.45, 0.2),
    ("read", 0.25, 0.5),
    ("complete", 0.08, 0.8),
    ("bookmark", 0.07, 1.0),
    ("share", 0.05, 1.5),
    ("skip", 0.10, -0.5),
)
CONTENT_TYPES = ("passage", "devotional", "plan_day")


@dataclass
class Population:
    """Users and their sessions."""

    users: list[uuid.UUID]
    sessions: list[list[uuid.UUID]]


def make_population(n_users: int, sessions_per_user: int = 4, seed: int = 7) -> Population:
    rng = np.random.default_rng(seed)
    users = [uuid.UUID(bytes=rng.bytes(16), version=4) for _ in range(n_users)]
    sessions = [[uuid.UUID(bytes=rng.bytes(16), version=4) for _ in range(sessions_per_user)] for _ in users]
    return Population(users, sessions)


def make_events(
    pop: Population, n: int, *, seed: int = 11, replay_rate: float = 0.02, n_content: int = 1189
) -> list[dict[str, Any]]:
    """``n`` event dicts in API shape: Zipf content, per-user Zipf activity, ~``replay_rate`` replays."""
    rng = np.random.default_rng(seed)
    user_idx = np.minimum(rng.zipf(1.3, n) - 1, len(pop.users) - 1)
    content_idx = np.minimum(rng.zipf(1.2, n) - 1, n_content - 1)
    probs = np.array([p for _, p, _ in SIGNALS])
    sig_idx = rng.choice(len(SIGNALS), n, p=probs / probs.sum())
    ctype_idx = rng.choice(len(CONTENT_TYPES), n, p=[0.7, 0.2, 0.1])
    sess_idx = rng.integers(0, len(pop.sessions[0]), n)
    now = datetime.now(UTC)
    offsets = rng.uniform(0, 36 * 3600, n)
    ids = rng.bytes(16 * n)
    events: list[dict[str, Any]] = []
    for i in range(n):
        u = int(user_idx[i])
        sig, _, w = SIGNALS[int(sig_idx[i])]
        ev: dict[str, Any] = {
            "client_event_id": str(uuid.UUID(bytes=ids[16 * i : 16 * i + 16], version=4)),
            "user_id": str(pop.users[u]),
            "session_id": str(pop.sessions[u][int(sess_idx[i])]),
            "content_id": f"C{int(content_idx[i]):05d}",
            "content_type": CONTENT_TYPES[int(ctype_idx[i])],
            "signal_type": sig,
            "signal_weight": w,
            "occurred_at": (now - timedelta(seconds=float(offsets[i]))).isoformat(),
        }
        if sig in ("read", "complete"):
            ev["metadata"] = {"seconds": int(offsets[i]) % 600, "platform": "ios" if i % 3 else "android"}
        events.append(ev)
    # Replays: copies of earlier events (same client id) sprinkled later in the stream.
    n_rep = int(n * replay_rate)
    if n_rep:
        src = rng.integers(0, n, n_rep)
        dst = rng.integers(0, n, n_rep)
        for s, d in zip(src, dst, strict=True):
            if s < d:
                events[int(d)] = dict(events[int(s)])
    return events
