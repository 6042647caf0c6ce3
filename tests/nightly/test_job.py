"""The nightly job: refresh, copy, decay parity, privacy, atomic replace, lock, ledger, retention, erase."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from nightly_helpers import add_events, add_user, ledger, snapshot_rows, wait_blocked
from psycopg import sql

from personalization.config import NightlySettings
from personalization.core.decay import DEFAULT_DECAY, DecayConfig, SignalDecay, event_score
from personalization.errors import InvalidInput, StoreUnavailable
from personalization.nightly.job import NightlyJob, NightlyRunning, as_of_start
from personalization.store.nightly import decay_sql, erase_user_features, erase_user_features_sync

NOW = datetime.now(UTC)
TODAY = NOW.date()


def test_snapshot_copies_refreshed_rollups_without_private_users(
    pg: psycopg.Connection[Any], job: NightlyJob, make_user: Callable[..., uuid.UUID]
) -> None:
    std = make_user("standard", events=3)
    default = make_user(None, events=2)  # NULL level = the column default 'standard'
    limited = make_user("limited", events=2)
    private = make_user("private", events=1)
    odd = make_user("vip", events=1)  # unknown level fails closed
    add_events(pg, None, [("passage", "view", 0.2, NOW - timedelta(hours=1))])  # anonymous
    add_events(pg, std, [("devotional", "share", 1.5, NOW - timedelta(days=2))])

    result = job.run(None)

    mv = pg.execute("SELECT count(*) FROM user_signal_rollups").fetchone()
    assert mv is not None and mv[0] == 7  # the view itself was refreshed, with every group
    rows = snapshot_rows(pg, TODAY)
    users = {r[0] for r in rows}
    assert users == {std, default}
    assert not users & {limited, private, odd}
    assert result.rows == len(rows) == 3
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    assert by_key[(std, "passage", "read")][3:5] == (3, Decimal("1.500"))
    assert by_key[(std, "devotional", "share")][3] == 1
    snap = pg.execute("SELECT as_of, as_of_ts, computed_at, row_count, run_id FROM feature_store.snapshots").fetchall()
    assert snap == [(TODAY, as_of_start(TODAY, job.settings.tz), result.computed_at, 3, result.run_id)]
    assert [(r[2], r[3], r[4]) for r in ledger(pg)] == [("cli", "succeeded", 3)]


def test_decay_sql_equals_python(pg: psycopg.Connection[Any], job: NightlyJob) -> None:
    u = add_user(pg)
    events = [
        ("passage", sig, w, NOW - timedelta(hours=h))
        for sig, w, h in [("view", 0.2, 1), ("view", 0.9, 200), ("read", 0.5, 30), ("skip", -0.5, 12),
                          ("skip", 0.25, 80), ("bookmark", 1.0, 1000), ("custom", 0.7, 50), ("custom", 0.1, 3)]
    ]
    events.append(("passage", "share", 1.5, NOW + timedelta(minutes=2)))  # after as_of_ts: factor above 1
    add_events(pg, u, events)
    result = job.run(None)
    at = as_of_start(result.as_of, job.settings.tz)
    expected: dict[str, float] = {}
    for _, sig, w, t in events:
        expected[sig] = expected.get(sig, 0.0) + event_score(DEFAULT_DECAY, sig, w, t, at)
    got = {r[2]: r[5] for r in snapshot_rows(pg, result.as_of)}
    assert got.keys() == expected.keys()
    for sig, v in expected.items():
        assert math.isclose(got[sig], v, rel_tol=1e-12, abs_tol=1e-15), sig
    assert got["skip"] < 0  # the sign comes from the signal type, not the stored weight


def test_decay_sql_form_with_custom_config(pg: psycopg.Connection[Any]) -> None:
    cfg = DecayConfig(signals={"a": SignalDecay(2.5, 3600.0), "b": SignalDecay(-0.5, 86400.0)},
                      default=SignalDecay(0.1, 60.0))
    scale, half_life = decay_sql(cfg)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    cases = [("a", 0.3, at - timedelta(minutes=90)), ("b", -0.8, at - timedelta(days=3)),
             ("zzz", 0.5, at - timedelta(seconds=30)), ("a", 1.0, at + timedelta(hours=1))]
    for sig, w, t in cases:
        stmt = sql.SQL(
            "SELECT ({scale}) * abs(w::float8) * power(2.0::float8, -date_part('epoch', %(at)s::timestamptz - t)"
            " / ({hl})) FROM (SELECT %(sig)s::text AS signal_type, %(w)s::numeric AS w, %(t)s::timestamptz AS t) x"
        ).format(scale=scale, hl=half_life)
        row = pg.execute(stmt, {"at": at, "sig": sig, "w": Decimal(str(w)), "t": t}).fetchone()
        assert row is not None
        assert math.isclose(row[0], event_score(cfg, sig, w, t, at), rel_tol=1e-12), sig


def test_rerun_replaces_the_dates_snapshot(pg: psycopg.Connection[Any], job: NightlyJob,
                                           make_user: Callable[..., uuid.UUID]) -> None:
    a = make_user(events=2)
    first = job.run(TODAY.isoformat())
    b = make_user(events=1)
    second = job.run(TODAY)
    rows = snapshot_rows(pg, TODAY)
    assert {r[0] for r in rows} == {a, b}
    assert second.rows == 2 and first.rows == 1
    parts = pg.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'feature_store.user_signal_features'::regclass"
    ).fetchall()
    assert parts == [(f"user_signal_features_{TODAY:%Y%m%d}",)]
    snap = pg.execute("SELECT run_id, row_count FROM feature_store.snapshots").fetchall()
    assert snap == [(second.run_id, 2)]


def test_bad_as_of_writes_nothing(pg: psycopg.Connection[Any], job: NightlyJob,
                                  make_user: Callable[..., uuid.UUID]) -> None:
    make_user()
    for bad in ("2026-02-30", "yesterday", "", (TODAY + timedelta(days=1)).isoformat(),
                (TODAY - timedelta(days=400)).isoformat()):
        with pytest.raises(InvalidInput) as ei:
            job.run(bad)
        assert ei.value.errors[0].loc == ["as_of"]
    assert ledger(pg) == []
    assert pg.execute("SELECT count(*) FROM feature_store.snapshots").fetchone() == (0,)


def test_future_is_judged_in_the_jobs_time_zone(db_url: str) -> None:
    # Kiritimati is UTC+14: its "today" can be a day ahead of UTC's, and that date is valid there.
    ahead = datetime.now(UTC).astimezone(NightlySettings(timezone="Pacific/Kiritimati").tz).date()
    behind = datetime.now(UTC).astimezone(NightlySettings(timezone="Pacific/Pago_Pago").tz).date()
    NightlyJob(db_url, NightlySettings(timezone="Pacific/Kiritimati"), decay=DEFAULT_DECAY).run(ahead)
    if ahead > behind:
        with pytest.raises(InvalidInput):
            NightlyJob(db_url, NightlySettings(timezone="Pacific/Pago_Pago"), decay=DEFAULT_DECAY).run(ahead)


def test_concurrent_runs_cannot_both_proceed(db_url: str, pg: psycopg.Connection[Any], job: NightlyJob,
                                             make_user: Callable[..., uuid.UUID]) -> None:
    make_user()
    outcome: list[Any] = []
    # Hold the snapshot catalogue so the first run stops mid-way (at its swap), holding the run lock.
    with psycopg.connect(db_url) as blocker:
        blocker.execute("LOCK TABLE feature_store.snapshots IN ACCESS EXCLUSIVE MODE")
        t = threading.Thread(target=lambda: outcome.append(job.run(None)))
        t.start()
        wait_blocked(pg)
        with pytest.raises(NightlyRunning):
            NightlyJob(db_url, job.settings, decay=DEFAULT_DECAY).run(None, trigger="second")
        blocker.rollback()
    t.join(30)
    assert outcome and outcome[0].rows == 1
    assert [(r[2], r[3]) for r in ledger(pg)] == [("cli", "succeeded"), ("second", "skipped")]


def test_retention_drops_old_snapshots(pg: psycopg.Connection[Any], db_url: str,
                                       make_user: Callable[..., uuid.UUID]) -> None:
    make_user()
    wide = NightlyJob(db_url, NightlySettings(timezone="UTC", retention_days=10), decay=DEFAULT_DECAY)
    for d in (5, 2, 0):
        wide.run(TODAY - timedelta(days=d))
    narrow = NightlyJob(db_url, NightlySettings(timezone="UTC", retention_days=3), decay=DEFAULT_DECAY)
    result = narrow.run(None)
    assert result.dropped == [TODAY - timedelta(days=5)]
    kept = [r[0] for r in pg.execute("SELECT as_of FROM feature_store.snapshots ORDER BY 1").fetchall()]
    assert kept == [TODAY - timedelta(days=2), TODAY]
    assert snapshot_rows(pg, TODAY - timedelta(days=5)) == []
    assert pg.execute("SELECT to_regclass(%s)", (f"feature_store.user_signal_features_"
                                                  f"{TODAY - timedelta(days=5):%Y%m%d}",)).fetchone() == (None,)
    assert ledger(pg)[-1][3:5] == ("succeeded", 1)


def test_failure_mid_run_is_recorded_and_previous_snapshot_kept(
    pg: psycopg.Connection[Any], db_url: str, job: NightlyJob, make_user: Callable[..., uuid.UUID]
) -> None:
    make_user()
    job.run(None)
    before = snapshot_rows(pg, TODAY)
    make_user()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            job.run(None)
        except BaseException as exc:
            errors.append(exc)

    with psycopg.connect(db_url) as blocker:
        blocker.execute("LOCK TABLE feature_store.snapshots IN ACCESS EXCLUSIVE MODE")
        t = threading.Thread(target=run)
        t.start()
        wait_blocked(pg)
        # The server ends the job's working session in the middle of the swap.
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE application_name = 'personalization-nightly' AND wait_event_type = 'Lock'")
        t.join(30)
        blocker.rollback()
    assert errors and isinstance(errors[0], StoreUnavailable)
    assert snapshot_rows(pg, TODAY) == before
    runs = ledger(pg)
    assert [r[3] for r in runs] == ["succeeded", "failed"]
    assert "terminat" in runs[1][5]
    after = job.run(None)
    assert after.rows == 2 and len(snapshot_rows(pg, TODAY)) == 2
    assert pg.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'feature_store'"
                      " AND tablename LIKE '\\_%'").fetchone() == (0,)  # staging tables cleaned up


async def test_erase_user_features(pg: psycopg.Connection[Any], db_url: str, job: NightlyJob,
                                   make_user: Callable[..., uuid.UUID]) -> None:
    a, b = make_user(), make_user()
    add_events(pg, a, [("devotional", "share", 1.0, NOW - timedelta(hours=2))])
    job.run(TODAY - timedelta(days=1))
    job.run(TODAY)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        n = await erase_user_features(conn, a)
        await conn.commit()
    assert n == 4  # two groups in each of two snapshots
    with psycopg.connect(db_url) as conn:
        assert erase_user_features_sync(conn, a) == 0
        assert erase_user_features_sync(conn, b) == 2
        conn.commit()
    assert snapshot_rows(pg, TODAY) == []


def test_user_erased_during_a_run_is_not_brought_back(db_url: str, pg: psycopg.Connection[Any], job: NightlyJob,
                                                      make_user: Callable[..., uuid.UUID]) -> None:
    a, b = make_user(), make_user()
    outcome: list[Any] = []
    with psycopg.connect(db_url) as blocker:
        blocker.execute("LOCK TABLE feature_store.snapshots IN ACCESS EXCLUSIVE MODE")
        t = threading.Thread(target=lambda: outcome.append(job.run(None)))
        t.start()
        wait_blocked(pg)  # the snapshot with a's rows is built and waits to be swapped in
        with psycopg.connect(db_url) as eraser:
            erase_user_features_sync(eraser, a)
            eraser.execute("DELETE FROM user_profile WHERE user_id = %s", (a,))
            eraser.commit()
        blocker.rollback()
    t.join(30)
    assert {r[0] for r in snapshot_rows(pg, TODAY)} == {b}
    assert outcome[0].rows == 1


def test_as_of_start_uses_the_time_zone() -> None:
    s = NightlySettings(timezone="America/New_York")
    assert as_of_start(date(2026, 7, 1), s.tz).astimezone(UTC) == datetime(2026, 7, 1, 4, tzinfo=UTC)
    with pytest.raises(ValueError):
        NightlySettings(timezone="Mars/Olympus")
