"""The demo's closed loop and readout wording: pure functions on a small simulated world."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from personalization_dev.demo.bible import Passage, load_passages
from personalization_dev.demo.experiment import verdict
from personalization_dev.demo.simulate import make_world, respond


@pytest.fixture(scope="module")
def passages() -> list[Passage]:
    return load_passages(limit_books=45)  # Genesis to Acts: every topic group has passages


def test_readers_act_more_on_lists_of_their_topics(passages: list[Passage]) -> None:
    """The arms differ only in the lists: one of the reader's favourite topic earns more reads."""
    world = make_world(passages, 60, seed=5)
    rng = np.random.default_rng(1)
    on: list[dict[str, object]] = []
    off: list[dict[str, object]] = []
    shown_on: set[str] = set()
    for r in world.readers:
        order = np.argsort(-r.affinity)
        best, worst = world.topic_names[int(order[0])], world.topic_names[int(order[-1])]
        liked = [world.content_id(i, "KJV") for i in world.by_topic[best][:10]]
        shown_on.update(liked)
        on += respond(world, r, liked, rng)
        off += respond(world, r, [world.content_id(i, "KJV") for i in world.by_topic[worst][:10]], rng)

    def count(events: list[dict[str, object]], sig: str) -> int:
        return sum(1 for e in events if e["signal_type"] == sig)

    assert count(on, "read") > 2 * count(off, "read") > 0
    assert count(off, "skip") > count(on, "skip")
    # Every event is on a shown item, in time order within the one session of each list.
    assert {e["content_id"] for e in on} <= shown_on
    assert all(str(e["occurred_at"]) < str(f["occurred_at"]) for e, f in pairwise(on)
               if e["session_id"] == f["session_id"])


def test_verdict_is_honest() -> None:
    assert verdict({"warning": "too few readers"}).startswith("no verdict")
    sig = {"relative_uplift": {"p_value": 0.001, "ci95": [0.02, 0.2]}, "srm_p_value": 0.5}
    assert verdict(sig).startswith("on beats off")
    flat = {"relative_uplift": {"p_value": 0.4, "ci95": [-0.1, 0.2]}, "srm_p_value": 0.5}
    assert "no significant difference" in verdict(flat)
    srm = {"relative_uplift": {"p_value": 0.4, "ci95": [-0.1, 0.2]}, "srm_p_value": 1e-6}
    assert "sample-ratio mismatch" in verdict(srm)
