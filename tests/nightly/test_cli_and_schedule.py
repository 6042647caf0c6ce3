"""The CLI as a process (kill -9 mid-run, exit codes) and the scheduler (catch-up, cron firing)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.triggers.cron import CronTrigger
from nightly_helpers import ledger, nightly_sessions, snapshot_rows, wait_blocked

from personalization.config import NightlySettings
from personalization.core.decay import DEFAULT_DECAY
from personalization.nightly.job import NightlyJob
from personalization.nightly.scheduler import NightlyScheduler
from personalization_dev.testing.waiting import wait_until

TODAY = datetime.now(UTC).date()
CLI = str(Path(sys.executable).parent / "personalization")


def _cli(db_url: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    env = os.environ | {"PERSONALIZATION_DATABASE_URL": db_url, "PERSONALIZATION_NIGHTLY_TIMEZONE": "UTC"}
    return subprocess.Popen([CLI, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _run(db_url: str, *args: str) -> tuple[int, str, str]:
    p = _cli(db_url, *args)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def test_killed_run_keeps_previous_snapshot_and_next_run_succeeds(
    db_url: str, pg: psycopg.Connection[Any], make_user: Callable[..., uuid.UUID]
) -> None:
    make_user()
    code, out, _ = _run(db_url, "jobs", "nightly", "--json")
    assert code == 0, out
    first = json.loads(out)
    before = snapshot_rows(pg, TODAY)
    make_user()
    with psycopg.connect(db_url) as blocker:
        # Stop the next run in the middle (its swap waits for this lock), then kill -9 it.
        blocker.execute("LOCK TABLE feature_store.snapshots IN ACCESS EXCLUSIVE MODE")
        proc = _cli(db_url, "jobs", "nightly", "--json")
        wait_blocked(pg)  # the run reached its swap
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        # The server notices the dead client (client_connection_check_interval) and ends its sessions.
        wait_until(lambda: nightly_sessions(pg) == 0, 30, "the killed run's sessions to go away")
        blocker.rollback()
    assert snapshot_rows(pg, TODAY) == before
    code, out, _ = _run(db_url, "jobs", "runs", "--json")
    runs = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in runs] == ["failed", "succeeded"]  # newest first; the dead run shows failed
    assert "abandoned" in runs[0]["error"]
    code, out, _ = _run(db_url, "jobs", "nightly", "--json")
    assert code == 0
    assert json.loads(out)["rows"] == first["rows"] + 1
    assert [r[3] for r in ledger(pg)] == ["succeeded", "failed", "succeeded"]


def test_cli_bad_input_exit_codes(tmp_path: Path, db_url: str, pg: psycopg.Connection[Any]) -> None:
    code, _, err = _run(db_url, "jobs", "nightly", "--as-of", "2026-02-30")
    assert code == 2 and "as_of" in err and "not a date" in err
    code, _, err = _run(db_url, "jobs", "nightly", "--as-of", (TODAY + timedelta(days=2)).isoformat())
    assert code == 2 and "future" in err
    bad = tmp_path / "e.csv"
    bad.write_text("user_id,when\nx,y\n")
    code, _, err = _run(db_url, "features", "export", "--entities", str(bad), "--out", str(tmp_path / "o.parquet"))
    assert code == 2 and "event_timestamp" in err
    assert not (tmp_path / "o.parquet").exists()
    assert ledger(pg) == []
    env = os.environ | {"PERSONALIZATION_DATABASE_URL": db_url, "PERSONALIZATION_NIGHTLY_CRON": "99 * * * *"}
    bad_cron = subprocess.run([CLI, "jobs", "schedule"], env=env, capture_output=True, text=True, timeout=60)
    assert bad_cron.returncode == 2 and "cron" in bad_cron.stderr


def test_cli_export_roundtrip(tmp_path: Path, db_url: str, make_user: Callable[..., uuid.UUID]) -> None:
    u = make_user(events=2)
    assert _run(db_url, "jobs", "nightly")[0] == 0
    ent = tmp_path / "e.csv"
    ent.write_text(f"user_id,event_timestamp,label\n{u},{(datetime.now(UTC) + timedelta(minutes=1)).isoformat()},1\n")
    code, out, err = _run(db_url, "features", "export", "--entities", str(ent), "--out", str(tmp_path / "o.parquet"),
                          "--json")
    assert code == 0, err
    assert json.loads(out)["rows_with_features"] == 1
    assert pq.read_table(tmp_path / "o.parquet").column("event_count").to_pylist() == [2]


def test_catch_up_runs_a_missed_night_once(db_url: str, pg: psycopg.Connection[Any],
                                           make_user: Callable[..., uuid.UUID]) -> None:
    make_user()
    settings = NightlySettings(timezone="Europe/Berlin", cron="30 1 * * *")
    sched = NightlyScheduler(NightlyJob(db_url, settings, decay=DEFAULT_DECAY))
    tz = settings.tz
    now = datetime.now(tz)
    missed = sched.previous_fire_time(now)
    assert missed is not None and missed <= now and (missed.hour, missed.minute) == (1, 30)
    assert now - missed < timedelta(days=1)
    result = sched.catch_up(now)
    assert result is not None and result.as_of == missed.date()
    assert sched.catch_up(now) is None  # that night is done now
    assert [(r[1], r[2], r[3]) for r in ledger(pg)] == [(missed.date(), "catch-up", "succeeded")]
    # Nothing missed within the window: no catch-up.
    none = NightlyScheduler(NightlyJob(db_url, NightlySettings(cron="0 2 * * *", catch_up_days=0), decay=DEFAULT_DECAY))
    assert none.catch_up(datetime(2026, 1, 1, 1, 0, tzinfo=UTC)) is None


def test_scheduler_fires_on_its_trigger_without_overlap(db_url: str, pg: psycopg.Connection[Any],
                                                        make_user: Callable[..., uuid.UUID]) -> None:
    make_user()
    job = NightlyJob(db_url, NightlySettings(timezone="UTC", catch_up_days=0), decay=DEFAULT_DECAY)
    sched = NightlyScheduler(job, trigger=CronTrigger(second="*", timezone=job.settings.tz))
    dropped: list[datetime] = []
    with psycopg.connect(db_url) as blocker:
        # The first run is held while the trigger fires every second: those fire times must
        # be dropped (max_instances=1), not started as overlapping runs.
        blocker.execute("LOCK TABLE feature_store.snapshots IN ACCESS EXCLUSIVE MODE")
        sched.start(blocking=False)
        sched.scheduler.add_listener(lambda e: dropped.extend(e.scheduled_run_times), EVENT_JOB_MAX_INSTANCES)
        try:
            wait_blocked(pg, 30)
            wait_until(lambda: len(dropped) >= 2, 30, lambda: f"two fire times dropped while held ({dropped})")
            blocker.rollback()
            wait_until(lambda: len([r for r in ledger(pg) if r[3] == "succeeded"]) >= 2, 30,
                       lambda: f"two succeeded runs (ledger: {ledger(pg)})")
        finally:
            sched.stop()
    runs = ledger(pg)
    assert {r[2] for r in runs} == {"schedule"}
    assert [r[3] for r in runs] == ["succeeded"] * len(runs)  # no 'skipped': no second run ever started
    spans = pg.execute("SELECT started_at, finished_at FROM feature_store.nightly_runs ORDER BY run_id").fetchall()
    # The dropped fire times came while the first run was held, a second or more apart.
    assert spans[0][0] < min(dropped) and max(dropped) < spans[0][1]
    assert spans[0][1] - spans[0][0] > timedelta(seconds=1)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_sigterm_mid_run_is_recorded_as_failed(db_url: str, pg: psycopg.Connection[Any],
                                               make_user: Callable[..., uuid.UUID]) -> None:
    make_user()
    with psycopg.connect(db_url) as blocker:
        blocker.execute("LOCK TABLE feature_store.snapshots IN ACCESS EXCLUSIVE MODE")
        proc = _cli(db_url, "jobs", "nightly")
        wait_blocked(pg)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        blocker.rollback()
    assert proc.returncode == 143
    assert [(r[3], r[5]) for r in ledger(pg)] == [("failed", "interrupted (SystemExit 143)")]
    assert pg.execute("SELECT count(*) FROM feature_store.snapshots").fetchone() == (0,)
