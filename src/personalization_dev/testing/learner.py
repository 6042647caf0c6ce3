"""Helpers for tests and the benchmark: fill a database, run learner children, read state back."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import numpy as np
import psycopg

from personalization_dev.childproc import CliChild
from personalization_dev.synthetic import SyntheticRow
from personalization_dev.testing.waiting import wait_until

__all__ = [
    "LearnerProcess",
    "Population",
    "consumed_offsets",
    "fill_population",
    "stream_order",
    "wait_consumed",
]

SIGNALS = ("view", "read", "complete", "bookmark", "share", "skip", "highlight")
CONTENT_TYPES = ("verse", "devotional", "plan_day")


@dataclass
class Population:
    """Users, content and events written to a database."""

    users: list[UUID]
    content_ids: list[str]
    rows: list[SyntheticRow]


def fill_population(
    db_url: str,
    *,
    users: int,
    contents: int,
    events: int,
    dim: int,
    seed: int = 1,
    without_vectors: int = 0,
    levels: Mapping[int, str] | None = None,
    spread_s: float = 60 * 86_400.0,
) -> Population:
    """Insert profiles, content embeddings and events (COPY); occurred_at is random (out of order).

    ``levels`` maps a user index to a privacy level (default standard).  The last
    ``without_vectors`` content ids get no embedding.  Returned rows carry no stream
    position yet (see :func:`stream_order`).
    """
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    user_ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(users)]
    content_ids = [f"content-{i}" for i in range(contents)]
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        with cur.copy("COPY user_profile (user_id, privacy_level) FROM STDIN") as cp:
            for i, u in enumerate(user_ids):
                cp.write_row((u, (levels or {}).get(i, "standard")))
        vecs = nrng.standard_normal((contents, dim)).astype("<f4")
        with cur.copy("COPY content_embeddings (content_id, model, dim, embedding) FROM STDIN") as cp:
            for i, cid in enumerate(content_ids[: contents - without_vectors]):
                cp.write_row((cid, "test-model", dim, vecs[i].tobytes()))
        raw: list[tuple[Any, ...]] = []
        for _ in range(events):
            raw.append(
                (
                    rng.choice(user_ids),
                    rng.choice(content_ids),
                    rng.choice(CONTENT_TYPES),
                    rng.choice(SIGNALS),
                    Decimal(rng.randint(1, 1000)) / 1000,
                    now - timedelta(seconds=rng.uniform(0, spread_s)),
                )
            )
        first = cur.execute("SELECT nextval('personalization_events_event_id_seq')").fetchone()
        assert first is not None
        base = int(first[0])
        with cur.copy(
            "COPY personalization_events (event_id, user_id, content_id, content_type, signal_type, "
            "signal_weight, occurred_at) FROM STDIN"
        ) as cp:
            for i, r in enumerate(raw):
                cp.write_row((base + 1 + i, *r))
        cur.execute("SELECT setval('personalization_events_event_id_seq', %s)", (base + len(raw) + 1,))
        conn.commit()
    rows = [SyntheticRow(base + 1 + i, r[0], r[1], r[2], r[3], r[4], r[5], 0, 0, 0, 0) for i, r in enumerate(raw)]
    return Population(user_ids, content_ids, rows)


def stream_order(rows: Sequence[SyntheticRow], *, seed: int = 2, shuffle_window: int = 8) -> list[SyntheticRow]:
    """Rows in a plausible commit order with Debezium positions.

    Event ids are shuffled within small windows (concurrent transactions commit out of id
    order); rows are grouped into transactions of 1-5 rows; ``commit_lsn`` grows per
    transaction and ``lsn`` per row, as ``source.sequence`` does.
    """
    rng = random.Random(seed)
    ordered = list(rows)
    for i in range(0, len(ordered), shuffle_window):
        window = ordered[i : i + shuffle_window]
        rng.shuffle(window)
        ordered[i : i + shuffle_window] = window
    out: list[SyntheticRow] = []
    lsn = 10_000_000
    tx = 1000
    i = 0
    now_ms = int(time.time() * 1000)
    while i < len(ordered):
        size = rng.randint(1, 5)
        commit = lsn
        tx += 1
        for r in ordered[i : i + size]:
            lsn += 100
            out.append(
                SyntheticRow(
                    r.event_id,
                    r.user_id,
                    r.content_id,
                    r.content_type,
                    r.signal_type,
                    r.signal_weight,
                    r.occurred_at,
                    commit,
                    lsn,
                    tx,
                    now_ms,
                )
            )
        lsn += 100
        i += size
    return out


def consumed_offsets(db_url: str, group_id: str, topic: str) -> dict[int, int]:
    """``{partition: next_offset}`` stored by a learner group."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT partition, next_offset FROM learner_offsets WHERE group_id = %s AND topic = %s",
            (group_id, topic),
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


def wait_consumed(db_url: str, group_id: str, topic: str, ends: Mapping[int, int], timeout_s: float) -> float:
    """Wait until the group stored offsets at or past ``ends``; returns the seconds waited.

    Raises :class:`~personalization_dev.testing.waiting.WaitTimeout` naming the offsets
    stored and expected.
    """
    began = time.monotonic()

    def reached() -> bool:
        done = consumed_offsets(db_url, group_id, topic)
        return all(done.get(p, 0) >= end for p, end in ends.items())

    wait_until(
        reached,
        timeout_s,
        lambda: f"learner group {group_id} to store offsets {dict(ends)} of {topic} "
        f"(stored {consumed_offsets(db_url, group_id, topic)})",
    )
    return time.monotonic() - began


class LearnerProcess(CliChild):
    """``personalization learner run`` as a child process (kill -9 tests, multi-process benchmark)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        """``env`` overrides the inherited environment (PERSONALIZATION_* variables)."""
        super().__init__("personalization.cli.learner", ("run",), env, name="learner")

    def start(self) -> None:
        """Spawn the child (it dies with this process)."""
        self.spawn()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); returns the exit code."""
        return super().stop(timeout_s)
