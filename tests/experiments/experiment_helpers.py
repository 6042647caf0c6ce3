"""Helpers of the experiments tests: readers and events written straight to PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import psycopg


def make_readers(db_url: str, n: int, privacy_level: str = "standard") -> list[uuid.UUID]:
    """``n`` profiles of ``privacy_level``."""
    ids = [uuid.uuid4() for _ in range(n)]
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO user_profile (user_id, privacy_level) SELECT u, %s FROM unnest(%s::uuid[]) AS u",
            (privacy_level, ids),
        )
    return ids


def add_events(db_url: str, rows: Sequence[tuple[uuid.UUID, str, str, float, datetime]]) -> None:
    """(user_id, signal_type, content_type, weight, occurred_at) rows into personalization_events."""
    with psycopg.connect(db_url) as conn, conn.cursor() as cur, cur.copy(
        "COPY personalization_events (user_id, content_id, content_type, signal_type, signal_weight, occurred_at)"
        " FROM STDIN"
    ) as cp:
        for uid, signal, ctype, weight, at in rows:
            cp.write_row((uid, "JHN.3", ctype, signal, weight, at))


def exposures(db_url: str, flag: str) -> dict[uuid.UUID, tuple[int, str, str, datetime]]:
    """user_id -> (phase, variant, reason, first_exposed_at) of the flag's exposures (latest phase wins)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT user_id, phase, variant, reason, first_exposed_at FROM experiment_exposures"
            " WHERE flag = %s ORDER BY phase",
            (flag,),
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def count_exposures(db_url: str, flag: str | None = None) -> int:
    with psycopg.connect(db_url) as conn:
        if flag is None:
            row = conn.execute("SELECT count(*) FROM experiment_exposures").fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM experiment_exposures WHERE flag = %s", (flag,)).fetchone()
    assert row is not None
    return int(row[0])
