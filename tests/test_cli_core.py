"""The CLI entry points of the signal store (run as a user would, in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "personalization.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
        timeout=timeout,
    )


def test_db_sql_prints_without_connecting() -> None:
    r = _cli("db", "sql", env={"PERSONALIZATION_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE user_profile" in r.stdout
    assert "CREATE MATERIALIZED VIEW user_signal_rollups" in r.stdout


def test_db_upgrade_creates_and_is_idempotent(pg_admin_url: str) -> None:
    from personalization.store.urls import with_dbname

    url = with_dbname(pg_admin_url, f"pz_cli_{os.getpid()}")
    try:
        first = _cli("db", "upgrade", env={"PERSONALIZATION_DATABASE_URL": url})
        assert first.returncode == 0, first.stderr
        assert "0001_spec_schema" in first.stdout
        second = _cli("db", "upgrade", env={"PERSONALIZATION_DATABASE_URL": url})
        assert second.returncode == 0 and "up to date" in second.stdout
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "pz_cli_{os.getpid()}" WITH (FORCE)')


def test_db_upgrade_unreachable_is_one_line_error() -> None:
    r = _cli("db", "upgrade", env={"PERSONALIZATION_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})
    assert r.returncode == 4  # PostgreSQL unreachable: retry later
    assert r.stderr.strip().startswith("error:")
    assert "Traceback" not in r.stderr


def test_bench_ingest_prints_one_json_line(db_url: str, redis_url: str) -> None:
    r = _cli(
        "bench",
        "ingest",
        "--events",
        "2000",
        "--users",
        "50",
        "--json",
        env={"PERSONALIZATION_DATABASE_URL": db_url, "PERSONALIZATION_REDIS_URL": redis_url},
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    for k in (
        "events",
        "library_events_per_s",
        "http_events_per_s",
        "baseline_copy_rows_per_s",
        "real_table_copy_rows_per_s",
        "library_ratio",
        "http_ratio",
        "http_p50_ms",
        "http_p99_ms",
    ):
        assert k in out
    assert out["events"] == 2000
    assert 0 < out["real_table_copy_ratio"] < 5
    # Both passes stored every non-replayed event.
    assert out["stored_rows"] == out["accepted"] > 0
