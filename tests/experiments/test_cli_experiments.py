"""``personalization experiments ...`` on a simulated experiment with a known effect.

The JSON line and one bad-input exit are checked as a shell sees them (a subprocess of the
installed entry point); the table and the other errors in process (Typer's runner), which
spares a slow interpreter start per command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import psycopg
from typer.testing import CliRunner

from personalization.cli.common import ExitCode
from personalization.cli.main import app
from personalization.config import get_settings
from personalization_dev.bench.experiments import FLAG, load

CLI = str(Path(sys.executable).parent / "personalization")


def _cli(db_url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PERSONALIZATION_DATABASE_URL": db_url, "PERSONALIZATION_REDIS_URL": redis_url}
    return subprocess.run([CLI, "experiments", *args], env=env, capture_output=True, text=True, timeout=120)


def _in_process(db_url: str, redis_url: str, *args: str) -> tuple[int, str, str]:
    env = {"PERSONALIZATION_DATABASE_URL": db_url, "PERSONALIZATION_REDIS_URL": redis_url}
    get_settings.cache_clear()
    try:
        r = CliRunner().invoke(app, ["experiments", *args], env=env)
    finally:
        get_settings.cache_clear()
    return r.exit_code, r.stdout, r.stderr


def test_results_table_json_and_bad_input(db_url: str, redis_url: str) -> None:
    # 4,000 readers, 80,000 events; the on arm bookmarks 40% more after exposure.
    load(db_url, readers=4000, events=80_000, lift=0.4)
    code, out, err = _in_process(
        db_url, redis_url, "metrics", "put", "bookmarks", "--signal-type", "bookmark", "--window-days", "7"
    )
    assert code == 0 and out.startswith("created:"), err

    js = _cli(db_url, redis_url, "results", FLAG, "--metric", "bookmarks", "--json", "--cuped")
    assert js.returncode == 0, js.stderr
    assert len(js.stdout.strip().splitlines()) == 1
    doc = orjson.loads(js.stdout)
    assert doc["cuped"] is True and [v["variant"] for v in doc["variants"]] == ["off", "on"]
    assert sum(v["users"] for v in doc["variants"]) == 4000
    lo, hi = doc["relative_uplift"]["ci95"]
    assert lo <= 0.4 <= hi and lo > 0  # the known effect is found and covered
    assert doc["srm_p_value"] > 0.001 and doc["chance_to_win"] > 0.99

    code, out, err = _in_process(db_url, redis_url, "results", FLAG, "--metric", "bookmarks")
    assert code == 0, err
    for text in ("readers", "relative uplift of on over off", "95% CI", "●", "p-value", "SRM p-value"):
        assert text in out, (text, out)
    code, out, _ = _in_process(db_url, redis_url, "show", FLAG, "--json")
    assert code == 0 and orjson.loads(out)["phases"][0]["phase"] == 1

    r = _cli(db_url, redis_url, "results", FLAG, "--metric", "nope")
    assert r.returncode == ExitCode.BAD_INPUT, r.stderr
    assert r.stderr.strip().splitlines() == ["error: query.metric: metric nope not found"]
    for args, field in (
        (["results", "no-such-flag", "--metric", "bookmarks"], "flag"),
        (["results", FLAG, "--metric", "bookmarks", "--phase", "3"], "phase"),
        (["metrics", "put", "broken", "--signal-type", "bookmark", "--aggregation", "median"], "aggregation"),
        (["metrics", "put", "broken", "--signal-type", "bookmark", "--window-days", "0"], "window_days"),
        (["metrics", "delete", "nope"], "metric"),
    ):
        code, _, err = _in_process(db_url, redis_url, *args)
        assert code == ExitCode.BAD_INPUT, (args, code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], (args, err)
    with psycopg.connect(db_url) as conn:
        assert [n for (n,) in conn.execute("SELECT name FROM experiment_metrics")] == ["bookmarks"]
