"""Plain helpers of the nightly tests (imported by basename, like tests/stack/stack_helpers)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from personalization_dev.testing.waiting import wait_until


def add_user(conn: psycopg.Connection[Any], privacy: str | None = "standard") -> uuid.UUID:
    u = uuid.uuid4()
    conn.execute("INSERT INTO user_profile (user_id, privacy_level) VALUES (%s, %s)", (u, privacy))
    return u


def add_events(conn: psycopg.Connection[Any], user: uuid.UUID | None,
               events: list[tuple[str, str, float, datetime]]) -> None:
    """(content_type, signal_type, signal_weight, occurred_at) rows for ``user``."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO personalization_events (user_id, content_id, content_type, signal_type, signal_weight,"
            " occurred_at) VALUES (%s, 'C1', %s, %s, %s, %s)",
            [(user, ct, st, Decimal(str(w)), t) for ct, st, w, t in events],
        )


def snapshot_rows(conn: psycopg.Connection[Any], as_of: Any) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT user_id, content_type, signal_type, event_count, total_weight, decayed_weight"
        " FROM feature_store.user_signal_features WHERE as_of = %s ORDER BY 1, 2, 3", (as_of,)
    ).fetchall()


def ledger(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT run_id, as_of, trigger, status, row_count, error FROM feature_store.nightly_runs ORDER BY run_id"
    ).fetchall()


def nightly_sessions(conn: psycopg.Connection[Any], *, waiting_on_lock: bool = False) -> int:
    """Sessions of nightly runs on this test's database (only those waiting for a lock, if asked)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'personalization-nightly'"
        " AND datname = current_database() AND (NOT %s OR wait_event_type = 'Lock')", (waiting_on_lock,)
    ).fetchone()
    return int(row[0]) if row else 0


def wait_blocked(conn: psycopg.Connection[Any], timeout_s: float = 60.0) -> None:
    """Wait until a nightly run waits for a lock (a test holds one to stop the run mid-way)."""
    wait_until(lambda: nightly_sessions(conn, waiting_on_lock=True), timeout_s, "a nightly run waiting for a lock")
