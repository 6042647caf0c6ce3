"""The rollup view swap of the nightly job: same view afterwards, readers undisturbed, bounded waits, fallbacks."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from nightly_helpers import add_events, snapshot_rows

from personalization.config import NightlySettings
from personalization.core.decay import DEFAULT_DECAY
from personalization.nightly.job import NightlyJob
from personalization_dev.testing.waiting import wait_until

NOW = datetime.now(UTC)
TODAY = NOW.date()

CATALOG = """
SELECT pg_get_viewdef('user_signal_rollups'::regclass, true),
       (SELECT array_agg(pg_get_indexdef(indexrelid) ORDER BY 1) FROM pg_index
         WHERE indrelid = 'user_signal_rollups'::regclass),
       (SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum) FROM pg_attribute
         WHERE attrelid = 'user_signal_rollups'::regclass AND attnum > 0 AND NOT attisdropped),
       (SELECT relispopulated FROM pg_class WHERE oid = 'user_signal_rollups'::regclass),
       obj_description('user_signal_rollups'::regclass, 'pg_class')
"""


def rollups(pg: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return pg.execute("SELECT user_id, content_type, signal_type, event_count FROM user_signal_rollups"
                      " ORDER BY 1, 2, 3").fetchall()


def test_swap_keeps_the_view_definition_indexes_grants_and_comment(
    pg: psycopg.Connection[Any], job: NightlyJob, make_user: Callable[..., uuid.UUID]
) -> None:
    role = f"pz_reader_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE ROLE {role}")
    try:
        pg.execute(f"GRANT SELECT ON user_signal_rollups TO {role}")
        pg.execute("COMMENT ON MATERIALIZED VIEW user_signal_rollups IS 'rollups of the spec'")
        before = pg.execute(CATALOG).fetchone()
        oid_before = pg.execute("SELECT 'user_signal_rollups'::regclass::oid").fetchone()
        u = make_user(events=3)
        result = job.run(None)
        assert result.refresh == "swap"
        assert pg.execute("SELECT 'user_signal_rollups'::regclass::oid").fetchone() != oid_before  # really swapped
        assert pg.execute(CATALOG).fetchone() == before
        assert pg.execute("SELECT has_table_privilege(%s, 'user_signal_rollups', 'SELECT')", (role,)).fetchone() == (
            True,)
        assert rollups(pg) == [(u, "passage", "read", 3)]
        # Nothing of the rebuild is left behind.
        assert pg.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'user\\_signal\\_rollups\\_\\_%'"
                          ).fetchone() == (0,)
        # The swapped view is a normal view: CONCURRENTLY still works on it (erase uses it).
        pg.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY user_signal_rollups")
    finally:
        pg.execute(f"REVOKE ALL ON user_signal_rollups FROM {role}")
        pg.execute(f"DROP ROLE {role}")


def test_prepared_reader_sees_the_new_rows_after_the_swap(
    db_url: str, pg: psycopg.Connection[Any], job: NightlyJob, make_user: Callable[..., uuid.UUID]
) -> None:
    u = make_user(events=1)
    job.run(None)
    with psycopg.connect(db_url, autocommit=True, prepare_threshold=0) as reader:
        query = "SELECT event_count FROM user_signal_rollups WHERE user_id = %s"
        for _ in range(3):  # server-side prepared from the first execution
            assert reader.execute(query, (u,)).fetchone() == (1,)
        add_events(pg, u, [("passage", "read", 0.5, NOW - timedelta(minutes=5))])
        job.run(None)
        assert reader.execute(query, (u,)).fetchone() == (2,)


def test_reader_holding_the_view_delays_the_swap_boundedly_then_falls_back(
    db_url: str, pg: psycopg.Connection[Any], make_user: Callable[..., uuid.UUID]
) -> None:
    settings = NightlySettings(timezone="UTC", retention_days=30, swap_lock_timeout_ms=100, swap_attempts=3)
    job = NightlyJob(db_url, settings, decay=DEFAULT_DECAY)
    u = make_user(events=1)
    job.run(None)
    add_events(pg, u, [("passage", "read", 0.5, NOW - timedelta(minutes=5))])
    outcome: list[Any] = []
    waits: list[float] = []
    with psycopg.connect(db_url) as holder:
        # A long reader transaction: it holds the view's lock until it ends.
        holder.execute("SELECT count(*) FROM user_signal_rollups").fetchone()
        t = threading.Thread(target=lambda: outcome.append(job.run(None)))
        t.start()
        with psycopg.connect(db_url, autocommit=True) as other:
            while t.is_alive():
                t0 = time.perf_counter()
                other.execute("SELECT count(*) FROM user_signal_rollups").fetchone()
                waits.append(time.perf_counter() - t0)
                time.sleep(0.01)  # pacing, not waiting: a reader every 10 ms while the job runs
        t.join(60)
        holder.rollback()
    assert outcome and outcome[0].refresh == "concurrently"
    # Other readers were held up at most about one bounded lock wait at a time.
    assert max(waits) < 1.0, max(waits)
    assert rollups(pg) == [(u, "passage", "read", 2)]
    assert snapshot_rows(pg, TODAY)[0][3] == 2


def _swap_waits(caplog: pytest.LogCaptureFixture) -> int:
    """Swap attempts that timed out on a reader's lock so far (one log record each)."""
    return sum(r.getMessage() == "rollup view swap waits for readers" for r in caplog.records)


def test_reader_finishing_lets_a_later_attempt_swap(
    db_url: str, pg: psycopg.Connection[Any], make_user: Callable[..., uuid.UUID], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="personalization.nightly.job")
    settings = NightlySettings(timezone="UTC", retention_days=30, swap_lock_timeout_ms=50, swap_attempts=25)
    job = NightlyJob(db_url, settings, decay=DEFAULT_DECAY)
    make_user(events=1)
    job.run(None)
    outcome: list[Any] = []
    with psycopg.connect(db_url) as holder:
        holder.execute("SELECT count(*) FROM user_signal_rollups").fetchone()
        t = threading.Thread(target=lambda: outcome.append(job.run(None)))
        t.start()
        # Several attempts time out on the reader's lock before it lets go.
        wait_until(lambda: _swap_waits(caplog) >= 3, 30, lambda: f"3 timed-out swap attempts ({_swap_waits(caplog)})")
        holder.rollback()
        t.join(60)
    assert outcome and outcome[0].refresh == "swap"
    assert 3 <= _swap_waits(caplog) < settings.swap_attempts


def test_user_erased_after_the_snapshot_does_not_return_to_the_view(
    db_url: str, pg: psycopg.Connection[Any], job: NightlyJob, make_user: Callable[..., uuid.UUID]
) -> None:
    a, b = make_user(), make_user()
    job.run(None)

    def erase_before_swap(step: str) -> None:
        # The rebuilt view (with a's rows, from the job's snapshot) waits to be swapped in.
        if step == "swap":
            with psycopg.connect(db_url) as eraser:
                eraser.execute("DELETE FROM personalization_events WHERE user_id = %s", (a,))
                eraser.execute("DELETE FROM user_profile WHERE user_id = %s", (a,))
                eraser.commit()

    result = job.run(None, on_step=erase_before_swap)
    assert result.refresh == "swap"
    assert {r[0] for r in rollups(pg)} == {b}
    assert {r[0] for r in snapshot_rows(pg, TODAY)} == {b}


def test_dependent_view_makes_the_job_refresh_concurrently(
    pg: psycopg.Connection[Any], job: NightlyJob, make_user: Callable[..., uuid.UUID]
) -> None:
    pg.execute("CREATE VIEW rollup_totals AS SELECT user_id, sum(event_count) AS n FROM user_signal_rollups"
               " GROUP BY user_id")
    u = make_user(events=2)
    result = job.run(None)
    assert result.refresh == "concurrently"
    assert pg.execute("SELECT n FROM rollup_totals WHERE user_id = %s", (u,)).fetchone() == (2,)


def test_concurrently_mode_and_leftover_next_view_of_a_killed_run(
    db_url: str, pg: psycopg.Connection[Any], make_user: Callable[..., uuid.UUID]
) -> None:
    u = make_user(events=2)
    # What a run killed between its rebuild and its swap leaves behind.
    pg.execute("CREATE MATERIALIZED VIEW user_signal_rollups__next AS SELECT 1 AS x")
    settings = NightlySettings(timezone="UTC", retention_days=30, refresh_mode="concurrently")
    job = NightlyJob(db_url, settings, decay=DEFAULT_DECAY)
    result = job.run(None)
    assert result.refresh == "concurrently"
    assert pg.execute("SELECT to_regclass('user_signal_rollups__next')").fetchone() == (None,)
    assert rollups(pg) == [(u, "passage", "read", 2)]
